//go:build linux

package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Create makes the group for id and applies l. A leftover empty group with
// the same id (from a crash) is reused; one that still holds processes is
// refused with ErrBusy. In "none" mode it returns a no-op group, and any
// limit is refused with ErrNoController.
func (m *Manager) Create(id string, l Limits) (*Group, error) {
	if err := validateID("id", id); err != nil {
		return nil, err
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	for c, set := range map[string]bool{"memory": l.MemoryBytes > 0, "cpu": l.CPUMillis > 0, "pids": l.Pids > 0} {
		if set && !m.has(c) {
			return nil, fmt.Errorf("%w: %s (mode %s)", ErrNoController, c, m.mode)
		}
	}
	g := m.group(id)
	if m.mode == ModeNone {
		return g, nil
	}
	if err := g.mkdirs(); err != nil {
		g.Remove()
		return nil, err
	}
	if err := g.apply(l); err != nil {
		g.Remove()
		return nil, fmt.Errorf("apply limits: %w", err)
	}
	return g, nil
}

// Open returns the existing group for id, to re-adopt its processes after
// an agent restart. It fails with ErrNotFound if the group is missing.
func (m *Manager) Open(id string) (*Group, error) {
	if err := validateID("id", id); err != nil {
		return nil, err
	}
	g := m.group(id)
	if m.mode == ModeNone {
		return g, nil
	}
	if _, err := os.Stat(g.primary()); err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrNotFound, id, err)
	}
	return g, nil
}

func (m *Manager) group(id string) *Group {
	g := &Group{m: m, id: id}
	if m.unified != "" {
		g.unified = filepath.Join(m.unified, id)
	}
	if len(m.v1) > 0 {
		g.v1 = make(map[string]string, len(m.v1))
		for c, d := range m.v1 {
			g.v1[c] = filepath.Join(d, id)
		}
	}
	return g
}

// primary is the directory whose cgroup.procs lists the members.
func (g *Group) primary() string {
	if g.unified != "" {
		return g.unified
	}
	for _, c := range []string{"pids", "memory", "cpu", "cpuacct", "freezer"} {
		if d, ok := g.v1[c]; ok {
			return d
		}
	}
	return ""
}

// dirs returns every directory of the group.
func (g *Group) dirs() []string {
	var out []string
	if g.unified != "" {
		out = append(out, g.unified)
	}
	for _, c := range []string{"memory", "cpu", "pids", "cpuacct", "freezer"} {
		if d, ok := g.v1[c]; ok {
			out = append(out, d)
		}
	}
	return out
}

func (g *Group) mkdirs() error {
	for _, d := range g.dirs() {
		err := os.Mkdir(d, 0o755)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create group %q: %w", g.id, err)
		}
	}
	pids, err := g.PIDs()
	if err != nil {
		return err
	}
	if len(pids) > 0 {
		return fmt.Errorf("%w: %q holds %d processes", ErrBusy, g.id, len(pids))
	}
	return nil
}

// apply writes l; zero fields reset the limit to unlimited.
func (g *Group) apply(l Limits) error {
	if g.m.mode == ModeV2 {
		mem, cpu, pids := "max", fmt.Sprintf("max %d", cpuPeriod), "max"
		if l.MemoryBytes > 0 {
			mem = strconv.FormatInt(l.MemoryBytes, 10)
		}
		if l.CPUMillis > 0 {
			cpu = fmt.Sprintf("%d %d", cpuQuota(l.CPUMillis), cpuPeriod)
		}
		if l.Pids > 0 {
			pids = strconv.Itoa(l.Pids)
		}
		for _, w := range []struct{ ctrl, file, val string }{
			{"memory", "memory.max", mem}, {"cpu", "cpu.max", cpu}, {"pids", "pids.max", pids},
		} {
			if g.m.has(w.ctrl) {
				if err := writeFile(filepath.Join(g.unified, w.file), w.val); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if d, ok := g.v1["memory"]; ok {
		v := "-1"
		if l.MemoryBytes > 0 {
			v = strconv.FormatInt(l.MemoryBytes, 10)
		}
		if err := writeFile(filepath.Join(d, "memory.limit_in_bytes"), v); err != nil {
			return err
		}
	}
	if d, ok := g.v1["cpu"]; ok {
		q := "-1"
		if l.CPUMillis > 0 {
			q = strconv.FormatInt(cpuQuota(l.CPUMillis), 10)
		}
		if err := writeFile(filepath.Join(d, "cpu.cfs_period_us"), strconv.Itoa(cpuPeriod)); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(d, "cpu.cfs_quota_us"), q); err != nil {
			return err
		}
	}
	if d, ok := g.v1["pids"]; ok {
		v := "max"
		if l.Pids > 0 {
			v = strconv.Itoa(l.Pids)
		}
		if err := writeFile(filepath.Join(d, "pids.max"), v); err != nil {
			return err
		}
	}
	return nil
}

// ID returns the group's id.
func (g *Group) ID() string { return g.id }

// Prepare sets attr so that the process started with it lands in the group,
// and returns after, which must be called once the process has started,
// with its pid, or with 0 if starting it failed (after then only releases
// resources).
//
// v2 (and v1 with unified tracking): the child is cloned straight into the
// group (attr.UseCgroupFD, CLONE_INTO_CGROUP); after closes the descriptor.
// v1: after also moves the child — and, with unified tracking, everything
// it forked meanwhile — into the v1 groups. none: no-op.
func (g *Group) Prepare(attr *syscall.SysProcAttr) (after func(pid int) error, err error) {
	if g.m.mode == ModeNone {
		return func(int) error { return nil }, nil
	}
	fd := -1
	if g.unified != "" {
		fd, err = unix.Open(g.unified, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open group %q: %w", g.id, err)
		}
		attr.UseCgroupFD = true
		attr.CgroupFD = fd
	}
	return func(pid int) error {
		if fd >= 0 {
			unix.Close(fd)
		}
		if pid <= 0 || len(g.v1) == 0 {
			return nil
		}
		return g.joinV1(pid)
	}, nil
}

// joinV1 moves pid into every v1 group. With unified tracking it moves all
// members of the tracking group until a pass finds nobody new: a process
// forked by a member before that member moved is then caught too, and
// anything forked after a move inherits the v1 groups.
func (g *Group) joinV1(pid int) error {
	moved := make(map[int]bool)
	todo := []int{pid}
	for round := 0; len(todo) > 0 && round < 100; round++ {
		for _, p := range todo {
			for _, c := range []string{"memory", "cpu", "pids", "cpuacct", "freezer"} {
				d, ok := g.v1[c]
				if !ok {
					continue
				}
				err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(p))
				if errors.Is(err, unix.ESRCH) {
					break // already gone
				}
				if err != nil {
					return fmt.Errorf("join pid %d to %s group: %w", p, c, err)
				}
			}
			moved[p] = true
		}
		todo = todo[:0]
		if g.unified == "" {
			break
		}
		members, err := readPIDs(filepath.Join(g.unified, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, p := range members {
			if !moved[p] {
				todo = append(todo, p)
			}
		}
	}
	return nil
}

// PIDs returns the processes in the group (none mode: always empty).
func (g *Group) PIDs() ([]int, error) {
	if g.m.mode == ModeNone {
		return nil, nil
	}
	pids, err := readPIDs(filepath.Join(g.primary(), "cgroup.procs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return pids, err
}

// Remove deletes the group's directories; call it after Kill. Missing
// directories are fine; a group still holding processes fails (EBUSY).
func (g *Group) Remove() error {
	var errs []error
	for _, d := range g.dirs() {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}
