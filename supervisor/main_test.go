package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// helperEnv makes the test binary run a workload of this package's own
// (beyond proctest's), named by os.Args[1].
const helperEnv = "VISOR_SUPERVISOR_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" && len(os.Args) > 1 {
		os.Exit(runHelper(os.Args[1], os.Args[2:]))
	}
	proctest.Main()
	goleak.VerifyTestMain(m)
}

// helperCommand returns an *exec.Cmd running the package's workload with args.
func helperCommand(workload string, args ...string) *exec.Cmd {
	cmd := exec.Command(proctest.Binary(), append([]string{workload}, args...)...)
	cmd.Env = append(proctest.Env(), helperEnv+"=1")
	return cmd
}

// runHelper implements the package's workloads:
//
//	reaping-parent LEADER GRANDCHILD: start a spawn-grandchild workload (the
//	leader) in a process group of its own, write its pid to LEADER (the
//	grandchild's goes to GRANDCHILD), reap it as soon as it exits (as init
//	does with an adopted process), then exit 0.
func runHelper(workload string, args []string) int {
	if workload != "reaping-parent" || len(args) != 2 {
		fmt.Fprintln(os.Stderr, "unknown helper workload", workload, args)
		return 2
	}
	cmd := proctest.Exec("spawn-grandchild", args[1])
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	tmp := args[0] + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := os.Rename(tmp, args[0]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_ = cmd.Wait()
	return 0
}

// recorder is a StateHandler that keeps every notification.
type recorder struct {
	mu  sync.Mutex
	all []Status
}

func (r *recorder) InstanceStateChanged(id string, st Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, st)
}

// states returns the sequence of states notified for id.
func (r *recorder) states(id string) []State {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []State
	for _, st := range r.all {
		if st.ID == id {
			out = append(out, st.State)
		}
	}
	return out
}

// of returns the notifications for id.
func (r *recorder) of(id string) []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Status
	for _, st := range r.all {
		if st.ID == id {
			out = append(out, st)
		}
	}
	return out
}

// testLogger routes hclog to t.Log.
func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:   t.Name(),
		Level:  hclog.Debug,
		Output: testWriter{t},
	})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// harness is a running Supervisor of one test.
type harness struct {
	*Supervisor
	rec    *recorder
	cancel context.CancelFunc
	done   chan error
}

// stopRun cancels Run and waits for it, leaving the processes running.
func (h *harness) stopRun(t testing.TB) {
	t.Helper()
	h.cancel()
	if err := <-h.done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
}

// start runs a Supervisor on cfg (StateDir defaults to a temp dir, Cgroups
// to "none"). Cleanup stops every instance, then Run.
func start(t testing.TB, cfg Config) *harness {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.Cgroups == "" {
		cfg.Cgroups = "none"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	rec := &recorder{}
	if cfg.Handler == nil {
		cfg.Handler = rec
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{Supervisor: s, rec: rec, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- s.Run(ctx) }()
	t.Cleanup(func() {
		select {
		case <-s.doneCh:
			return // the test stopped Run itself
		default:
		}
		ctx, cancelStop := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
		defer cancelStop()
		for _, st := range s.List() {
			if _, err := s.Stop(ctx, st.ID); err != nil {
				t.Errorf("cleanup: Stop(%s) = %v", st.ID, err)
			}
		}
		h.stopRun(t)
	})
	return h
}

// sleeper is a Spec running the "sleep" workload.
func sleeper(id string) Spec {
	return Spec{ID: id, Command: proctest.Command("sleep"), Env: proctest.Env()}
}

// waitState waits until id is in state want.
func waitState(t testing.TB, s *Supervisor, id string, want State) Status {
	t.Helper()
	var st Status
	proctest.WaitFor(t, 20*time.Second, "state "+string(want)+" of "+id, func() bool {
		st, _ = s.Status(id)
		return st.State == want
	})
	return st
}

// waitNotified waits until the notifications of id include all of want, in order.
func waitNotified(t testing.TB, r *recorder, id string, want ...State) {
	t.Helper()
	proctest.WaitFor(t, 20*time.Second, "notifications of "+id, func() bool {
		return isSubsequence(r.states(id), want)
	})
}

func isSubsequence(have, want []State) bool {
	i := 0
	for _, s := range have {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	return i == len(want)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(60*time.Second))
	t.Cleanup(cancel)
	return ctx
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
