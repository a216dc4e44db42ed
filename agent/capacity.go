package agent

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/visorhq/visor/registry"
)

// Admission, as Nomad's resources do it: a host has so much memory, CPU
// and pids for instances (HostResources, what it has minus a reserve for
// the system and the agent), and a number of slots (Capacity). Each
// instance reserves the memory and CPU its process type declares
// (registry.Limits, which are also its cgroup limits) or, when it
// declares no memory, Config.InstanceMemory. A start ticket is claimed
// only while the host has a free slot and the reservation fits; the
// rest wait in the registry for a host that can take them.
//
// Unless Config.Capacity says otherwise, the slots are what the binding
// resource allows: memory / InstanceMemory, or the pid limit /
// DefaultInstancePids, whichever is smaller.

// Defaults of admission (see Config).
const (
	// DefaultInstanceMemory is the memory an instance reserves when its
	// process type declares none: 128 MiB.
	DefaultInstanceMemory = 128 << 20
	// DefaultInstancePids is how many pids (processes and threads) the
	// default capacity counts per instance.
	DefaultInstancePids = 32
	// DefaultStartRate and DefaultStartBurst bound the starts per second
	// on one host (a token bucket): a burst of tickets cannot fork so fast
	// that the agent's own lease keepalive starves.
	DefaultStartRate  = 50.0
	DefaultStartBurst = 50
)

// System reserves: what the instances never get of a host.
const (
	minMemoryReserve = 256 << 20 // and at least a tenth of the memory
	minPidsReserve   = 256       // and at least a tenth of the pid limit
)

// hostFacts is what a host has, as read from it.
type hostFacts struct {
	MemoryBytes int64 // physical memory; 0 if unknown
	CPUs        int
	// PidLimit is the binding one of the kernel's pid_max and threads-max
	// and the agent's cgroup pids.max (and its ancestors'); 0 if unknown.
	PidLimit int
}

// hostResources is what instances may have of a host with facts f: all of
// it but the system reserves.
func hostResources(f hostFacts) registry.HostResources {
	var r registry.HostResources
	if f.MemoryBytes > 0 {
		reserve := max(f.MemoryBytes/10, minMemoryReserve)
		r.MemoryBytes = max(f.MemoryBytes-reserve, f.MemoryBytes/2)
	}
	if f.CPUs > 0 {
		r.CPUMillis = f.CPUs * 1000
	}
	if f.PidLimit > 0 {
		reserve := max(f.PidLimit/10, minPidsReserve)
		r.Pids = max(f.PidLimit-reserve, f.PidLimit/2)
	}
	return r
}

// defaultCapacity is the number of slots of a host with resources r when
// each instance reserves instMem bytes and instPids pids, and which of
// the two binds ("memory" or "pids"); at least 1. With neither known, it
// is 0 (unlimited) and says "unknown".
func defaultCapacity(r registry.HostResources, instMem int64, instPids int) (int, string) {
	slots, by := 0, "unknown"
	if r.MemoryBytes > 0 && instMem > 0 {
		slots, by = int(r.MemoryBytes/instMem), "memory"
	}
	if r.Pids > 0 && instPids > 0 {
		if n := r.Pids / instPids; by == "unknown" || n < slots {
			slots, by = n, "pids"
		}
	}
	if by == "unknown" {
		return 0, by
	}
	return max(slots, 1), by
}

// reservation is what one instance takes of its host.
type reservation struct {
	MemoryBytes int64
	CPUMillis   int
}

// usage is what the instances of a host take together.
type usage struct {
	Instances   int
	MemoryBytes int64
	CPUMillis   int
}

func (u *usage) add(r reservation) {
	u.Instances++
	u.MemoryBytes += r.MemoryBytes
	u.CPUMillis += r.CPUMillis
}

// admit decides whether a host with capacity slots (< 1: unlimited) and
// resources res, its instances taking used, can take one more instance
// reserving want; if not, why says which bound is reached. Resources the
// host does not know (zero) bound nothing.
func admit(capacity int, res registry.HostResources, used usage, want reservation) (ok bool, why string) {
	switch {
	case capacity > 0 && used.Instances >= capacity:
		return false, fmt.Sprintf("all %d slots used", capacity)
	case res.MemoryBytes > 0 && want.MemoryBytes > res.MemoryBytes:
		return false, fmt.Sprintf("the instance reserves %s, more than the host's %s", mib(want.MemoryBytes), mib(res.MemoryBytes))
	case res.MemoryBytes > 0 && used.MemoryBytes+want.MemoryBytes > res.MemoryBytes:
		return false, fmt.Sprintf("memory: %s of %s reserved, the instance needs %s", mib(used.MemoryBytes), mib(res.MemoryBytes), mib(want.MemoryBytes))
	case res.CPUMillis > 0 && want.CPUMillis > 0 && used.CPUMillis+want.CPUMillis > res.CPUMillis:
		return false, fmt.Sprintf("cpu: %dm of %dm reserved, the instance needs %dm", used.CPUMillis, res.CPUMillis, want.CPUMillis)
	}
	return true, ""
}

func mib(b int64) string { return fmt.Sprintf("%d MiB", b>>20) }

// Meta keys holding an instance's reservation, so that a re-adopted
// instance counts what it reserved.
const (
	metaReserveMem = "reserve_memory"
	metaReserveCPU = "reserve_cpu"
)

func (r reservation) meta(m map[string]string) {
	m[metaReserveMem] = strconv.FormatInt(r.MemoryBytes, 10)
	m[metaReserveCPU] = strconv.Itoa(r.CPUMillis)
}

// readHostFacts reads this host's memory (gopsutil), CPUs and pid limit.
func readHostFacts() hostFacts {
	f := hostFacts{CPUs: runtime.NumCPU()}
	if vm, err := mem.VirtualMemory(); err == nil {
		f.MemoryBytes = int64(vm.Total)
	}
	f.PidLimit = pidLimit("/proc", "/sys/fs/cgroup")
	return f
}

// pidLimit is the binding pid limit: the smallest of kernel/pid_max,
// kernel/threads-max (under procDir/sys) and pids.max of this process's
// cgroup v2 and its ancestors (under cgroupRoot); 0 if none is readable.
func pidLimit(procDir, cgroupRoot string) int {
	limit := 0
	take := func(n int) {
		if n > 0 && (limit == 0 || n < limit) {
			limit = n
		}
	}
	take(readInt(filepath.Join(procDir, "sys/kernel/pid_max")))
	take(readInt(filepath.Join(procDir, "sys/kernel/threads-max")))
	if rel := cgroupPath(filepath.Join(procDir, "self/cgroup")); rel != "" {
		for dir := filepath.Join(cgroupRoot, rel); strings.HasPrefix(dir, cgroupRoot); dir = filepath.Dir(dir) {
			take(readInt(filepath.Join(dir, "pids.max"))) // "max" reads as 0
			if dir == cgroupRoot {
				break
			}
		}
	}
	return limit
}

// cgroupPath is this process's cgroup v2 path ("0::/path" in
// /proc/self/cgroup), or "".
func cgroupPath(file string) string {
	fh, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Clean("/" + p)
		}
	}
	return ""
}

func readInt(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return n
}

// hostAdmission reads this host's resources and builds its admission
// bookkeeping with the slots cfg asks for (Config.Capacity: explicit,
// unlimited, or computed from the resources), and logs them.
func hostAdmission(cfg Config, log hclog.Logger) *admission {
	res := hostResources(readHostFacts())
	switch {
	case cfg.Capacity > 0:
		log.Info("host capacity", "slots", cfg.Capacity, "by", "-capacity", "memory_bytes", res.MemoryBytes, "cpu_millis", res.CPUMillis)
		return newAdmission(cfg.Capacity, res, 0)
	case cfg.Capacity < 0:
		log.Warn("host capacity unlimited (-capacity -1): one large scale can overload this host")
		return newAdmission(0, res, 0)
	}
	slots, by := defaultCapacity(res, cfg.InstanceMemory, DefaultInstancePids)
	log.Info("host capacity", "slots", slots, "by", by, "memory_bytes", res.MemoryBytes,
		"pids", res.Pids, "cpu_millis", res.CPUMillis, "instance_memory", cfg.InstanceMemory)
	return newAdmission(slots, res, cfg.InstanceMemory)
}
