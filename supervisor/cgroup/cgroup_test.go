//go:build linux

package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLimitsValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		l     Limits
		field string
	}{
		{"zero", Limits{}, ""},
		{"all set", Limits{MemoryBytes: 1 << 20, CPUMillis: 10, Pids: 1}, ""},
		{"negative memory", Limits{MemoryBytes: -1}, "memory_bytes"},
		{"negative cpu", Limits{CPUMillis: -5}, "cpu_millis"},
		{"cpu too small", Limits{CPUMillis: 9}, "cpu_millis"},
		{"negative pids", Limits{Pids: -1}, "pids"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.l.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidLimits) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate = %v, want ErrInvalidLimits naming %s", err, tc.field)
			}
		})
	}
	if !(Limits{}).IsZero() || (Limits{Pids: 1}).IsZero() {
		t.Fatal("IsZero wrong")
	}
	if q := cpuQuota(500); q != 50_000 {
		t.Fatalf("cpuQuota(500) = %d", q)
	}
}

func TestValidateID(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"", ".", "..", "a/b", "../x", "/abs", "a\x00b", "a\nb", strings.Repeat("x", 201)} {
		if err := validateID("id", id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("validateID(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	for _, id := range []string{"web-1", "app.web.3", "x", "a..b"} {
		if err := validateID("id", id); err != nil {
			t.Errorf("validateID(%q) = %v", id, err)
		}
	}
}

func TestProbeNone(t *testing.T) {
	t.Parallel()
	root := t.TempDir() // no cgroup file system at all
	if _, err := Probe(root, "../up", testLogger(t)); !errors.Is(err, ErrInvalidID) {
		t.Fatalf("bad parent: %v", err)
	}
	m, err := Probe(root, "visor", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeNone || len(m.Controllers()) != 0 {
		t.Fatalf("mode %s controllers %v, want none", m.Mode(), m.Controllers())
	}
	if _, err := m.Create("web-1", Limits{MemoryBytes: 1 << 20}); !errors.Is(err, ErrNoController) {
		t.Fatalf("limits without controllers: %v", err)
	}
	if _, err := m.Create("a/b", Limits{}); !errors.Is(err, ErrInvalidID) {
		t.Fatalf("bad id: %v", err)
	}
	g, err := m.Create("web-1", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var attr syscall.SysProcAttr
	after, err := g.Prepare(&attr)
	if err != nil || attr.UseCgroupFD {
		t.Fatalf("Prepare: %v, UseCgroupFD %v", err, attr.UseCgroupFD)
	}
	if err := after(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	pids, err := g.PIDs()
	if err != nil || len(pids) != 0 {
		t.Fatalf("PIDs = %v, %v", pids, err)
	}
	if n, err := g.OOMKills(); n != 0 || err != nil {
		t.Fatalf("OOMKills = %d, %v", n, err)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 0 {
		t.Fatalf("none mode wrote %d entries", len(entries))
	}
}

// fakeV2 builds a cgroup2-like tree in a temp dir offering ctrls.
func fakeV2(t *testing.T, ctrls string) string {
	t.Helper()
	root := t.TempDir()
	for name, val := range map[string]string{
		"cgroup.controllers":     ctrls + "\n",
		"cgroup.subtree_control": "",
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(val), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestV2FakeTree(t *testing.T) {
	t.Parallel()
	root := fakeV2(t, "cpuset cpu io memory hugetlb pids rdma misc")
	m, err := Probe(root, "visor", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeV2 || !slices.Equal(m.Controllers(), []string{"memory", "cpu", "pids"}) {
		t.Fatalf("mode %s controllers %v", m.Mode(), m.Controllers())
	}
	for _, p := range []string{"cgroup.subtree_control", "visor/cgroup.subtree_control"} {
		if got := readString(t, filepath.Join(root, p)); got != "+memory +cpu +pids" {
			t.Fatalf("%s = %q", p, got)
		}
	}

	g, err := m.Create("web-1", Limits{MemoryBytes: 64 << 20, CPUMillis: 1500, Pids: 100})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "visor", "web-1")
	for file, want := range map[string]string{
		"memory.max": "67108864",
		"cpu.max":    "150000 100000",
		"pids.max":   "100",
	} {
		if got := readString(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	// Zero limits reset to "max" (a reused group must not keep old limits).
	g0, err := m.Create("web-0", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"memory.max": "max", "cpu.max": "max 100000", "pids.max": "max"} {
		if got := readString(t, filepath.Join(root, "visor", "web-0", file)); got != want {
			t.Errorf("zero limits: %s = %q, want %q", file, got, want)
		}
	}
	_ = g0 // a fake directory holds real files, which rmdir (Remove) refuses

	var attr syscall.SysProcAttr
	after, err := g.Prepare(&attr)
	if err != nil {
		t.Fatal(err)
	}
	if !attr.UseCgroupFD || attr.CgroupFD < 0 {
		t.Fatalf("Prepare did not request CLONE_INTO_CGROUP: %+v", attr)
	}
	if err := after(0); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(attr.CgroupFD), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("after did not close the cgroup fd: %v", err)
	}

	// Reading back what the kernel would report.
	files := map[string]string{
		// Above any pid_max, so that no real process could ever be hit.
		"cgroup.procs":   "4194401\n4194402\n",
		"cgroup.kill":    "",
		"memory.events":  "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n",
		"memory.current": "123456\n",
		"cpu.stat":       "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
	}
	for name, val := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(val), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if pids, err := g.PIDs(); err != nil || !slices.Equal(pids, []int{4194401, 4194402}) {
		t.Fatalf("PIDs = %v, %v", pids, err)
	}
	if n, err := g.OOMKills(); err != nil || n != 2 {
		t.Fatalf("OOMKills = %d, %v", n, err)
	}
	if s, err := g.Stats(); err != nil || s.MemoryBytes != 123456 || s.CPUUsage.Seconds() != 2.5 {
		t.Fatalf("Stats = %+v, %v", s, err)
	}
	// A leftover group that still has processes is not reused.
	if _, err := m.Create("web-1", Limits{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("Create over a busy group: %v", err)
	}
	if _, err := m.Open("web-1"); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := m.Open("web-9"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open missing: %v", err)
	}
	// A group that does not empty: Kill writes cgroup.kill, then gives up.
	m.killTimeout = 30 * time.Millisecond
	if err := g.Kill(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Kill of a group that stays populated: %v", err)
	}
	if got := readString(t, filepath.Join(dir, "cgroup.kill")); got != "1" {
		t.Fatalf("cgroup.kill = %q", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := g.Kill(); err != nil { // already empty: nothing to write
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(dir, "cgroup.kill")); got != "" {
		t.Fatalf("Kill wrote cgroup.kill %q for an empty group", got)
	}
	// Bad input.
	if _, err := m.Create("..", Limits{}); !errors.Is(err, ErrInvalidID) {
		t.Fatalf("Create(..): %v", err)
	}
	if _, err := m.Create("web-2", Limits{Pids: -1}); !errors.Is(err, ErrInvalidLimits) {
		t.Fatalf("negative pids: %v", err)
	}
}

func TestV2FakeTreeMissingControllers(t *testing.T) {
	t.Parallel()
	root := fakeV2(t, "cpu io hugetlb") // like this host's unified hierarchy, but no v1 either
	m, err := Probe(root, "visor", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != ModeNone {
		t.Fatalf("mode %s, want none (v2 lacks memory and pids, no v1)", m.Mode())
	}
}
