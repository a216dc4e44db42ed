package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// parseMemory parses a byte count with an optional binary unit: "512K",
// "256M", "256Mi", "1.5G", "1024". Units are powers of 1024.
func parseMemory(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(t, "B")
	t = strings.TrimSuffix(t, "I")
	mult := float64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f*mult > math.MaxInt64/2 {
		return 0, usageError("--memory %q: want a size such as 256M, 1G or 0", s)
	}
	n := int64(f * mult)
	if n == 0 && f != 0 {
		// 0 means unlimited: a size too small to count is not that.
		return 0, usageError("--memory %q: less than one byte; want a size such as 256M, or 0 for unlimited", s)
	}
	return n, nil
}

// minCPUMillis is the smallest CPU limit the supervisor accepts, in
// millicores: supervisor/cgroup's Limits.Validate rejects a cpu_millis
// below 10 ("below the minimum of 10"), so a lower limit would make every
// start of the process fail. cmd/visor does not import supervisor/cgroup;
// keep the two in step.
const minCPUMillis = 10

// parseCPU parses a CPU limit: millicores ("500", "500m") or cores with a
// decimal point ("0.5"). 0 means unlimited; any other value must be at
// least minCPUMillis once rounded to millicores.
func parseCPU(s string) (int, error) {
	t := strings.TrimSpace(s)
	bad := usageError("--cpu %q: want millicores (500) or cores (0.5)", s)
	var n int
	var nonZero bool
	if m, ok := strings.CutSuffix(t, "m"); ok {
		v, err := strconv.Atoi(m)
		if err != nil || v < 0 {
			return 0, bad
		}
		n, nonZero = v, v != 0
	} else if strings.Contains(t, ".") {
		f, err := strconv.ParseFloat(t, 64)
		if err != nil || f < 0 || math.IsNaN(f) || f > 1e6 {
			return 0, bad
		}
		// nonZero also for a value that rounds to 0 ("0.0004"): 0 means
		// unlimited, which is not what was asked for.
		n, nonZero = int(math.Round(f*1000)), f != 0
	} else {
		v, err := strconv.Atoi(t)
		if err != nil || v < 0 {
			return 0, bad
		}
		n, nonZero = v, v != 0
	}
	if nonZero && n < minCPUMillis {
		return 0, usageError("--cpu %q: below the minimum of %dm (%g cores); 0 = unlimited", s, minCPUMillis, float64(minCPUMillis)/1000)
	}
	return n, nil
}

// String formats the limits for tables ("mem=256M cpu=500m pids=64").
func (l limitsOut) String() string {
	var parts []string
	if l.MemoryBytes > 0 {
		parts = append(parts, "mem="+formatBytes(l.MemoryBytes))
	}
	if l.CPUMillis > 0 {
		parts = append(parts, fmt.Sprintf("cpu=%dm", l.CPUMillis))
	}
	if l.Pids > 0 {
		parts = append(parts, fmt.Sprintf("pids=%d", l.Pids))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func formatBytes(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d%s", n/u.size, u.suffix)
		}
	}
	return strconv.FormatInt(n, 10)
}
