//go:build linux

package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/visorhq/visor/internal/proctest"
)

var parentSeq atomic.Int64

// realManager probes the host's cgroups with a parent unique to the test and
// removes everything it created when the test ends. It skips when the
// host offers no controller, saying so.
func realManager(t *testing.T) *Manager {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cgroup tests need root to create groups")
	}
	parent := fmt.Sprintf("visor-test-%d-%d", os.Getpid(), parentSeq.Add(1))
	m, err := Probe("", parent, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeParent(t, m) })
	if m.Mode() == ModeNone {
		t.Skip("no usable cgroup controller on this host (neither v2 nor v1 memory/cpu/pids)")
	}
	return m
}

// removeParent kills and removes leftover groups, then the parent dirs.
func removeParent(t *testing.T, m *Manager) {
	dirs := slices.Collect(mapValues(m.v1))
	if m.unified != "" {
		dirs = append(dirs, m.unified)
	}
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if e.IsDir() {
				if g, err := m.Open(e.Name()); err == nil {
					g.Kill()
					g.Remove()
				}
			}
		}
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("remove parent %s: %v", d, err)
		}
	}
}

func mapValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// startIn starts the helper workload mode inside g and returns it with its
// stdout.
func startIn(t *testing.T, g *Group, mode string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	after, err := g.Prepare(cmd.SysProcAttr)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		after(0)
		t.Fatal(err)
	}
	if err := after(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	return cmd, bufio.NewReader(out)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

func TestProbeReal(t *testing.T) {
	t.Parallel()
	m := realManager(t)
	t.Logf("mode %s, controllers %v, unified tracking %v", m.Mode(), m.Controllers(), m.unified != "")
	if _, err := os.Stat(filepath.Join(DefaultRoot, "memory", "cgroup.procs")); err == nil && m.Mode() == ModeV1 {
		// The development hosts: v1 memory/cpu/pids, v2 with hugetlb only.
		for _, c := range limitControllers {
			if !slices.Contains(m.Controllers(), c) {
				t.Errorf("v1 controller %s not reported: %v", c, m.Controllers())
			}
		}
	}
}

func TestCreateLimitsReal(t *testing.T) {
	t.Parallel()
	m := realManager(t)
	l := Limits{MemoryBytes: 64 << 20, CPUMillis: 500, Pids: 64}
	g, err := m.Create("limits", l)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	switch m.Mode() {
	case ModeV2:
		want = map[string]string{
			filepath.Join(g.unified, "memory.max"): "67108864",
			filepath.Join(g.unified, "cpu.max"):    "50000 100000",
			filepath.Join(g.unified, "pids.max"):   "64",
		}
	case ModeV1:
		want = map[string]string{
			filepath.Join(g.v1["memory"], "memory.limit_in_bytes"): "67108864",
			filepath.Join(g.v1["cpu"], "cpu.cfs_quota_us"):         "50000",
			filepath.Join(g.v1["cpu"], "cpu.cfs_period_us"):        "100000",
			filepath.Join(g.v1["pids"], "pids.max"):                "64",
		}
	}
	for file, w := range want {
		if got := readString(t, file); got != w {
			t.Errorf("%s = %q, want %q", file, got, w)
		}
	}
	// A leftover empty group (agent crash) is reused, with the new limits.
	g, err = m.Create("limits", Limits{})
	if err != nil {
		t.Fatalf("Create over an empty leftover group: %v", err)
	}
	if m.has("pids") {
		file := filepath.Join(g.v1["pids"], "pids.max")
		if m.Mode() == ModeV2 {
			file = filepath.Join(g.unified, "pids.max")
		}
		if got := readString(t, file); got != "max" {
			t.Errorf("reused group keeps pids.max %q, want max", got)
		}
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, d := range g.dirs() {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Remove: %v", d, err)
		}
	}
	if err := g.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, err := m.Open("limits"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open after Remove: %v", err)
	}
}

// testPlaceAndKill starts a workload that forks a grandchild, checks both
// are in the group, kills the group and checks nothing survives.
func testPlaceAndKill(t *testing.T, m *Manager) {
	var l Limits
	if m.has("pids") {
		l.Pids = 32
	}
	g, err := m.Create("place", l)
	if err != nil {
		t.Fatal(err)
	}
	cmd, out := startIn(t, g, "spawn")
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	grandchild, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	pids, err := g.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, cmd.Process.Pid) || !slices.Contains(pids, grandchild) {
		t.Fatalf("PIDs %v lacks child %d or grandchild %d", pids, cmd.Process.Pid, grandchild)
	}
	for c, d := range g.v1 { // every v1 hierarchy holds both
		got, err := readPIDs(filepath.Join(d, "cgroup.procs"))
		if err != nil || !slices.Contains(got, cmd.Process.Pid) || !slices.Contains(got, grandchild) {
			t.Fatalf("v1 %s group holds %v (%v)", c, got, err)
		}
	}
	if s, err := g.Stats(); err != nil {
		t.Fatal(err)
	} else if (m.has("memory") && s.MemoryBytes == 0) || (m.has("cpuacct") && s.CPUUsage == 0) {
		t.Fatalf("Stats of a running group = %+v", s)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if pids, err := g.PIDs(); err != nil || len(pids) != 0 {
		t.Fatalf("after Kill: PIDs %v, %v", pids, err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL", err)
	}
	proctest.WaitFor(t, 5*time.Second, "grandchild gone", func() bool { return !alive(grandchild) })
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
}

func TestPlaceAndKillReal(t *testing.T) {
	t.Parallel()
	testPlaceAndKill(t, realManager(t))
}

// TestPlaceAndKillV1Plain covers v1 without unified tracking: join after
// fork, and kill through the freezer.
func TestPlaceAndKillV1Plain(t *testing.T) {
	t.Parallel()
	m := realManager(t)
	if m.Mode() != ModeV1 {
		t.Skipf("host backend is %s, not v1", m.Mode())
	}
	plain := *m
	plain.unified = ""
	testPlaceAndKill(t, &plain)
}

// TestV2RealUnifiedHierarchy runs the v2 code paths (CLONE_INTO_CGROUP,
// cgroup.kill, membership) on the real unified hierarchy, even where it
// has no controllers to enable (then without limits).
func TestV2RealUnifiedHierarchy(t *testing.T) {
	t.Parallel()
	m := realManager(t)
	if m.Mode() != ModeV2 {
		if m.unified == "" {
			t.Skip("no writable cgroup2 hierarchy with cgroup.kill on this host")
		}
		m = &Manager{logger: m.logger, mode: ModeV2, unified: m.unified}
	}
	testPlaceAndKill(t, m)
}

func TestOOMKillReal(t *testing.T) {
	t.Parallel()
	m := realManager(t)
	if !m.has("memory") {
		t.Skipf("no memory controller (mode %s, controllers %v): cannot OOM-kill", m.Mode(), m.Controllers())
	}
	g, err := m.Create("oom", Limits{MemoryBytes: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	before, err := g.OOMKills()
	if err != nil || before != 0 {
		t.Fatalf("OOMKills of a new group = %d, %v", before, err)
	}
	cmd, _ := startIn(t, g, "alloc:256")
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("allocating child ended with %v, want SIGKILL by the OOM killer", err)
	}
	n, err := g.OOMKills()
	if err != nil || n < 1 {
		t.Fatalf("OOMKills = %d, %v; want >= 1", n, err)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenReadoptReal(t *testing.T) {
	t.Parallel()
	m := realManager(t)
	g, err := m.Create("readopt", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	cmd, _ := startIn(t, g, "sleep")
	// A new manager (as after an agent restart) finds the same group.
	m2, err := Probe("", filepath.Base(m.primaryParent()), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	g2, err := m2.Open("readopt")
	if err != nil {
		t.Fatal(err)
	}
	if pids, err := g2.PIDs(); err != nil || !slices.Contains(pids, cmd.Process.Pid) {
		t.Fatalf("re-opened group PIDs %v, %v; want %d", pids, err, cmd.Process.Pid)
	}
	if _, err := m2.Create("readopt", Limits{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("Create over a running group: %v", err)
	}
	if err := g2.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if err := g2.Remove(); err != nil {
		t.Fatal(err)
	}
}

// primaryParent returns one parent directory of m (for tests).
func (m *Manager) primaryParent() string {
	if m.unified != "" {
		return m.unified
	}
	for _, d := range m.v1 {
		return d
	}
	return ""
}
