//go:build linux

package cgroup

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// OOMKills returns how many processes of the group the kernel OOM-killed
// (0 without a memory controller).
func (g *Group) OOMKills() (uint64, error) {
	var file string
	switch {
	case g.m.mode == ModeV2 && g.m.has("memory"):
		file = filepath.Join(g.unified, "memory.events")
	case g.v1["memory"] != "":
		file = filepath.Join(g.v1["memory"], "memory.oom_control")
	default:
		return 0, nil
	}
	v, err := readKey(file, "oom_kill")
	if err != nil {
		return 0, fmt.Errorf("oom kills of %q: %w", g.id, err)
	}
	return v, nil
}

// Stats returns current memory use and CPU time consumed (zero fields when
// the controller is missing).
func (g *Group) Stats() (Stats, error) {
	var s Stats
	switch g.m.mode {
	case ModeV2:
		if g.m.has("memory") {
			v, err := readUint(filepath.Join(g.unified, "memory.current"))
			if err != nil {
				return s, err
			}
			s.MemoryBytes = v
		}
		if usec, err := readKey(filepath.Join(g.unified, "cpu.stat"), "usage_usec"); err == nil {
			s.CPUUsage = time.Duration(usec) * time.Microsecond
		} else if g.m.has("cpu") {
			return s, err
		}
	case ModeV1:
		if d, ok := g.v1["memory"]; ok {
			v, err := readUint(filepath.Join(d, "memory.usage_in_bytes"))
			if err != nil {
				return s, err
			}
			s.MemoryBytes = v
		}
		if d, ok := g.v1["cpuacct"]; ok {
			v, err := readUint(filepath.Join(d, "cpuacct.usage"))
			if err != nil {
				return s, err
			}
			s.CPUUsage = time.Duration(v)
		}
	}
	return s, nil
}

// writeFile writes one value to a cgroup file (created on plain file
// systems, so that a fake tree in a test directory works).
func writeFile(path, val string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(val)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func readWords(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	words := strings.Fields(string(b))
	for i, w := range words {
		words[i] = strings.TrimPrefix(w, "+")
	}
	return words, nil
}

func readPIDs(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		pids = append(pids, p)
	}
	return pids, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// readKey returns the value of "key N" in a flat-keyed cgroup file.
func readKey(path, key string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s %s: %w", path, key, err)
			}
			return n, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %q: %w", path, key, fs.ErrNotExist)
}
