package supervisor

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/restart"
)

// startCgroups runs a supervisor with the host's cgroup backend, skipping
// (and saying so) when the host has no usable controller.
func startCgroups(t *testing.T) *harness {
	t.Helper()
	h := start(t, Config{Cgroups: "auto", CgroupParent: "visor-test"})
	if h.CgroupMode() == "none" {
		t.Skip("no usable cgroup controller on this host (neither v2 nor v1 memory/cpu/pids): limits cannot be tested")
	}
	t.Logf("cgroup mode %s", h.CgroupMode())
	return h
}

func TestOOMKillCountedAsOOM(t *testing.T) {
	t.Parallel()
	h := startCgroups(t)
	ctx := ctxT(t)
	spec := Spec{ID: "hog-" + strconv.Itoa(int(time.Now().UnixNano()%1e6)), Command: proctest.Command("alloc", "512"), Env: proctest.Env(),
		Limits:  cgroup.Limits{MemoryBytes: 64 << 20},
		Restart: restart.Policy{Mode: restart.ModeOnFailure, NoBackoff: true, MaxRestarts: 1}}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	st, err := h.Wait(ctx, spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateFailed || st.Restarts[restart.ReasonOOM] != 1 || st.Restarts[restart.ReasonFail] != 0 ||
		st.Signal != "KILL" {
		t.Fatalf("Wait() = %+v, want failed after one oom restart", st)
	}
	for _, n := range h.rec.of(spec.ID) {
		if n.State == StateBackoff && n.Reason != "oom" {
			t.Fatalf("backoff reason %q, want oom", n.Reason)
		}
	}
	if err := h.Remove(spec.ID); err != nil {
		t.Fatal(err)
	}
}

func TestStopKillsWholeCgroup(t *testing.T) {
	t.Parallel()
	h := startCgroups(t)
	ctx := ctxT(t)
	file := filepath.Join(t.TempDir(), "escapee")
	spec := Spec{ID: "escape-" + strconv.Itoa(int(time.Now().UnixNano()%1e6)), Command: proctest.Command("spawn-escapee", file), Env: proctest.Env(),
		StopTimeout: 5 * time.Second, Limits: cgroup.Limits{Pids: 64}}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(proctest.ReadFile(t, 20*time.Second, file))
	if err != nil || !proctest.Alive(pid) {
		t.Fatalf("escapee %d not running: %v", pid, err)
	}
	if _, err := h.Stop(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 20*time.Second, "escapee gone", func() bool { return !proctest.Alive(pid) })
	if err := h.Remove(spec.ID); err != nil {
		t.Fatal(err)
	}
}
