//go:build linux

package cgroup

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// limitControllers are the controllers limits are written to.
var limitControllers = []string{"memory", "cpu", "pids"}

// killTimeout bounds how long Kill waits for a group to empty.
const killTimeout = 5 * time.Second

// Manager creates and opens the groups of one parent cgroup. It is safe for
// concurrent use; it holds no mutable state after Probe.
type Manager struct {
	logger      hclog.Logger
	mode        string
	controllers []string // usable, in probe order
	// v2: the parent directory in the unified hierarchy. v1: the parent in
	// a controller-less unified hierarchy used for tracking ("" if none).
	unified string
	// v1: controller -> parent directory (memory, cpu, pids, cpuacct, freezer).
	v1 map[string]string
	// killTimeout bounds Kill; zero means killTimeout (tests shorten it).
	killTimeout time.Duration
}

// Group is one instance's cgroup (one directory per hierarchy).
type Group struct {
	m       *Manager
	id      string
	unified string            // group dir in the unified hierarchy, or ""
	v1      map[string]string // controller -> group dir
}

// Probe finds the best backend under root (DefaultRoot when empty) and
// prepares the parent group (e.g. "visor") in it. It tries v2, then v1,
// then settles for "none", which it logs once at Warn. It fails only for an
// invalid parent name.
func Probe(root, parent string, logger hclog.Logger) (*Manager, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	logger = logger.Named("cgroup")
	if err := validateID("parent", parent); err != nil {
		return nil, err
	}
	if root == "" {
		root = DefaultRoot
	}
	m := &Manager{logger: logger, mode: ModeNone}
	unifiedRoot := findUnified(root)
	if unifiedRoot != "" {
		if ctrls, dir, err := probeV2(unifiedRoot, parent); err == nil {
			m.mode, m.controllers, m.unified = ModeV2, ctrls, dir
			logger.Info("cgroup backend", "mode", m.mode, "controllers", strings.Join(ctrls, ","), "dir", dir)
			return m, nil
		} else {
			logger.Debug("cgroup v2 not usable", "dir", unifiedRoot, "error", err)
		}
	}
	m.v1 = probeV1(root, parent, logger)
	for _, c := range []string{"memory", "cpu", "pids", "cpuacct", "freezer"} {
		if _, ok := m.v1[c]; ok {
			m.controllers = append(m.controllers, c)
		}
	}
	if !slices.ContainsFunc(m.controllers, func(c string) bool { return slices.Contains(limitControllers, c) }) {
		m.v1, m.controllers = nil, nil
		logger.Warn("no usable cgroup controller; processes are tracked by process group only", "root", root)
		return m, nil
	}
	m.mode = ModeV1
	if unifiedRoot != "" {
		m.unified = probeTracking(unifiedRoot, parent)
	}
	logger.Info("cgroup backend", "mode", m.mode, "controllers", strings.Join(m.controllers, ","),
		"unified_tracking", m.unified != "")
	return m, nil
}

// findUnified returns the unified hierarchy under root: root itself (pure
// v2) or root/unified (hybrid), or "".
func findUnified(root string) string {
	for _, d := range []string{root, filepath.Join(root, "unified")} {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			return d
		}
	}
	return ""
}

// probeV2 enables memory, cpu and pids for the parent's children and
// returns them with the parent dir.
func probeV2(uroot, parent string) ([]string, string, error) {
	avail, err := readWords(filepath.Join(uroot, "cgroup.controllers"))
	if err != nil {
		return nil, "", err
	}
	for _, c := range limitControllers {
		if !slices.Contains(avail, c) {
			return nil, "", fmt.Errorf("%w: %s not in cgroup.controllers", ErrNoController, c)
		}
	}
	enable := "+memory +cpu +pids"
	if err := writeFile(filepath.Join(uroot, "cgroup.subtree_control"), enable); err != nil {
		return nil, "", err
	}
	dir := filepath.Join(uroot, parent)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, "", fmt.Errorf("create parent: %w", err)
	}
	if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), enable); err != nil {
		return nil, "", err
	}
	got, err := readWords(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return nil, "", err
	}
	for _, c := range limitControllers {
		if !slices.Contains(got, c) {
			return nil, "", fmt.Errorf("%w: %s not enabled in %s", ErrNoController, c, dir)
		}
	}
	return slices.Clone(limitControllers), dir, nil
}

// probeV1 returns controller -> parent dir for each usable v1 hierarchy.
func probeV1(root, parent string, logger hclog.Logger) map[string]string {
	dirs := make(map[string]string)
	for _, c := range []string{"memory", "cpu", "pids", "cpuacct", "freezer"} {
		base := filepath.Join(root, c)
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			continue
		}
		dir := filepath.Join(base, parent)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			logger.Debug("cgroup v1 controller not writable", "controller", c, "error", err)
			continue
		}
		dirs[c] = dir
	}
	return dirs
}

// probeTracking prepares a controller-less parent in the unified hierarchy
// for exact membership and cgroup.kill, or returns "".
func probeTracking(uroot, parent string) string {
	dir := filepath.Join(uroot, parent)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return ""
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		return "" // kernel older than 5.14, or not a cgroup2 file system
	}
	return dir
}

// Mode returns the backend: "v2", "v1" or "none".
func (m *Manager) Mode() string { return m.mode }

// Controllers returns the usable controllers (v1 may add cpuacct, freezer).
func (m *Manager) Controllers() []string { return slices.Clone(m.controllers) }

func (m *Manager) has(c string) bool { return slices.Contains(m.controllers, c) }

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

// Kill SIGKILLs every process in the group and waits (bounded) until it is
// empty; ErrBusy if it does not empty in time. v2 and unified tracking use
// cgroup.kill; v1 freezes the group first when the freezer is available, so
// nothing forks while it is being emptied. In none mode Kill does nothing.
func (g *Group) Kill() error {
	if g.m.mode == ModeNone {
		return nil
	}
	killFile := ""
	if g.unified != "" {
		killFile = filepath.Join(g.unified, "cgroup.kill")
		if _, err := os.Stat(killFile); err != nil {
			killFile = ""
		}
	}
	freezer := g.v1["freezer"]
	timeout := cmp.Or(g.m.killTimeout, killTimeout)
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		pids, err := g.PIDs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			if freezer != "" {
				_ = writeFile(filepath.Join(freezer, "freezer.state"), "THAWED")
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %q still holds %d processes after %v", ErrBusy, g.id, len(pids), timeout)
		}
		if killFile != "" {
			if err := writeFile(killFile, "1"); err != nil {
				return fmt.Errorf("kill group %q: %w", g.id, err)
			}
			// The kernel reports "populated 0" in cgroup.events, with an
			// inotify event, once the last member has exited.
			watched, err := waitUnpopulated(g.unified, deadline)
			if err != nil {
				return fmt.Errorf("kill group %q: %w", g.id, err)
			}
			if watched {
				continue
			}
		} else {
			g.signalAll(pids, freezer)
		}
		// No emptiness notification (v1, or no cgroup.events): dying
		// processes leave the group asynchronously, so look again after a
		// short, growing pause.
		t := time.NewTimer(wait)
		<-t.C
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// signalAll SIGKILLs pids, with the v1 group frozen meanwhile when a
// freezer is available: frozen tasks cannot fork, and SIGKILL is delivered
// on thaw.
func (g *Group) signalAll(pids []int, freezer string) {
	if freezer != "" {
		_ = writeFile(filepath.Join(freezer, "freezer.state"), "FROZEN")
	}
	self := os.Getpid()
	for _, p := range pids {
		if p > 1 && p != self { // never init or the agent itself
			_ = unix.Kill(p, unix.SIGKILL)
		}
	}
	if freezer != "" {
		_ = writeFile(filepath.Join(freezer, "freezer.state"), "THAWED")
	}
}

// waitUnpopulated blocks until dir/cgroup.events reads "populated 0" or
// the deadline passes (the caller re-checks either way). It reports false,
// without waiting, when the file cannot be watched.
func waitUnpopulated(dir string, deadline time.Time) (watched bool, err error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return false, fmt.Errorf("inotify init: %w", err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	events := filepath.Join(dir, "cgroup.events")
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		return false, nil
	}
	if err := f.SetReadDeadline(deadline); err != nil {
		return false, err
	}
	buf := make([]byte, 4096)
	for {
		n, err := readKey(events, "populated")
		if err != nil {
			return false, nil // not a real cgroup2 group
		}
		if n == 0 {
			return true, nil
		}
		if _, err := f.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return true, nil
			}
			return true, fmt.Errorf("inotify read: %w", err)
		}
	}
}

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
