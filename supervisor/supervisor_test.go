package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/supervisor/restart"
)

func TestStartStop(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	spec := sleeper("web-1")
	spec.Meta = map[string]string{"app": "web"}
	st, err := h.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	if st.State != StateRunning || st.PID <= 0 || st.Meta["app"] != "web" || !h.Has("web-1") {
		t.Fatalf("Start() status = %+v (known: %v)", st, h.Has("web-1"))
	}
	if !proctest.Alive(st.PID) {
		t.Fatalf("pid %d not alive", st.PID)
	}
	if pgid, _ := syscall.Getpgid(st.PID); pgid != st.PID {
		t.Fatalf("pgid = %d, want own group %d", pgid, st.PID)
	}
	if _, err := h.Start(ctx, spec); !errors.Is(err, ErrExists) {
		t.Fatalf("second Start() = %v, want ErrExists", err)
	}
	if got, ok := h.Status("web-1"); !ok || got.RSSBytes == 0 || got.Phase != PhaseRunning {
		t.Fatalf("Status() = %+v, %v; want RSS and phase running", got, ok)
	}
	final, err := h.Stop(ctx, "web-1")
	if err != nil {
		t.Fatalf("Stop() = %v", err)
	}
	if final.State != StateExited || final.Reason != "stopped" || final.Signal != "TERM" || final.PID != 0 {
		t.Fatalf("Stop() status = %+v", final)
	}
	if proctest.Alive(st.PID) {
		t.Fatalf("pid %d alive after Stop", st.PID)
	}
	waitNotified(t, h.rec, "web-1", StateStarting, StateRunning, StateStopping, StateExited)
	// Wait works after the exit; Remove forgets the instance.
	if w, err := h.Wait(ctx, "web-1"); err != nil || w.State != StateExited {
		t.Fatalf("Wait() = %+v, %v", w, err)
	}
	if err := h.Remove("web-1"); err != nil {
		t.Fatalf("Remove() = %v", err)
	}
	if _, ok := h.Status("web-1"); ok || h.Has("web-1") || h.journal.has("web-1") {
		t.Fatal("instance or state record still there after Remove")
	}
	if err := h.Remove("web-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove() again = %v, want ErrNotFound", err)
	}
}

func TestRemoveActive(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	if _, err := h.Start(ctxT(t), sleeper("a")); err != nil {
		t.Fatal(err)
	}
	if err := h.Remove("a"); !errors.Is(err, ErrActive) {
		t.Fatalf("Remove() = %v, want ErrActive", err)
	}
}

func TestCrashRestartWithBackoff(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	spec := Spec{ID: "crashy", Command: proctest.Command("crash-after", "20ms"), Env: proctest.Env(),
		Restart: restart.Policy{InitialDelay: 50 * time.Millisecond, MaxDelay: time.Second}}
	first, err := h.Start(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 20*time.Second, "two restarts", func() bool {
		st, _ := h.Status("crashy")
		return st.Restarts[restart.ReasonFail] >= 2
	})
	waitNotified(t, h.rec, "crashy", StateRunning, StateBackoff, StateStarting, StateRunning, StateBackoff)
	var backoffs []Status
	for _, st := range h.rec.of("crashy") {
		if st.State == StateBackoff {
			backoffs = append(backoffs, st)
		}
	}
	b := backoffs[0]
	if b.ExitCode != 1 || b.Phase != PhaseExited || b.Reason != "exit code 1" || b.Backoff <= 0 || b.Backoff > 50*time.Millisecond {
		t.Fatalf("backoff status = %+v", b)
	}
	if backoffs[1].Backoff <= 50*time.Millisecond*8/10 {
		t.Fatalf("second backoff %v did not grow", backoffs[1].Backoff)
	}
	st, _ := h.Status("crashy")
	if st.PID == first.PID && st.PID != 0 {
		t.Fatalf("same pid %d after restart", st.PID)
	}
}

// TestCrashLoopGrowsCapsResets runs a real crash loop: runs 1-4 crash at
// once, run 5 stays up until the test kills it after a stable run, run 6
// crashes at once, then the workload stays up. The delays grow, stop at
// MaxDelay and start over after the stable run only. What counts as stable
// is the test's to say, not the machine's speed: the supervisor's uptime
// clock (Config.now) stands still except when the test moves it, by
// ResetAfter, while run 5 is up. A crash-at-once run that takes seconds to
// start and exit on a loaded machine (one took 8.3 s under -race at load
// 55, and reset the backoff when ResetAfter was 8 s of real time) still
// has an uptime of zero.
func TestCrashLoopGrowsCapsResets(t *testing.T) {
	t.Parallel()
	clock := &stepClock{t: time.Now()}
	h := start(t, Config{now: clock.now})
	counter := filepath.Join(t.TempDir(), "count")
	const resetAfter = time.Minute // of clock: it passes when the test says so
	spec := Spec{ID: "loop", Command: proctest.Command("crash-seq", counter, "0s,0s,0s,0s,1h,0s"), Env: proctest.Env(),
		Restart: restart.Policy{InitialDelay: 40 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
			Jitter: 0.01, ResetAfter: resetAfter}}
	if _, err := h.Start(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	// Each run is a start of this -race test binary: seconds each at a
	// load of 30 on 2 cores, so the deadlines are minutes (a deadline,
	// not a wait: an idle machine is through in well under a second).
	// Run 5 is up once the process has counted itself (before that a kill
	// would end it before it knew it was run 5).
	var run5 Status
	proctest.WaitFor(t, 3*time.Minute, "run 5 up after four crashes", func() bool {
		run5, _ = h.Status("loop")
		b, _ := os.ReadFile(counter)
		return run5.Restarts[restart.ReasonFail] == 4 && run5.State == StateRunning && string(b) == "5"
	})
	clock.advance(resetAfter)
	if err := syscall.Kill(run5.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill run 5 (pid %d): %v", run5.PID, err)
	}
	proctest.WaitFor(t, 2*time.Minute, "six restarts", func() bool {
		st, _ := h.Status("loop")
		return st.Restarts[restart.ReasonFail] == 6 && st.State == StateRunning
	})
	var got []time.Duration
	var reasons []string
	for _, st := range h.rec.of("loop") {
		if st.State == StateBackoff {
			got = append(got, st.Backoff)
			reasons = append(reasons, st.Reason)
		}
	}
	want := []time.Duration{40, 80, 100, 100, 40, 80}
	if len(got) != len(want) {
		t.Fatalf("backoffs %v, want about %v ms", got, want)
	}
	for i, w := range want {
		w *= time.Millisecond
		if got[i] > w || got[i] < w*98/100 {
			t.Fatalf("backoff %d = %v, want about %v (all: %v)", i, got[i], w, got)
		}
	}
	if reasons[4] != "signal KILL" || reasons[3] != "exit code 1" || reasons[5] != "exit code 1" {
		t.Fatalf("backoff reasons %q: want the fifth to be the kill of the stable run", reasons)
	}
}

// stepClock is a clock for Config.now that stands still until advanced.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *stepClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestNeverStaysExited(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	spec := Spec{ID: "once", Command: proctest.Command("exit", "3"), Env: proctest.Env(),
		Restart: restart.Policy{Mode: restart.ModeNever}}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	st, err := h.Wait(ctx, "once")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateExited || st.ExitCode != 3 || st.Phase != PhaseExited || len(st.Restarts) != 0 {
		t.Fatalf("Wait() = %+v", st)
	}
	in, _ := h.lookup("once")
	in.mu.Lock()
	pending := in.backoffTimer != nil
	in.mu.Unlock()
	if pending {
		t.Fatal("restart pending under mode never")
	}
	// on-failure: a clean exit stays exited too.
	spec = Spec{ID: "clean", Command: proctest.Command("exit", "0"), Env: proctest.Env(),
		Restart: restart.Policy{Mode: restart.ModeOnFailure}}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if st, err := h.Wait(ctx, "clean"); err != nil || st.ExitCode != 0 || len(st.Restarts) != 0 {
		t.Fatalf("Wait() = %+v, %v", st, err)
	}
}

func TestMaxRestartsFails(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	spec := Spec{ID: "budget", Command: proctest.Command("exit", "1"), Env: proctest.Env(),
		Restart: restart.Policy{NoBackoff: true, MaxRestarts: 2}}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	st, err := h.Wait(ctx, "budget")
	if err != nil || st.State != StateFailed || st.Restarts[restart.ReasonFail] != 2 {
		t.Fatalf("Wait() = %+v, %v; want failed after 2 restarts", st, err)
	}
}

// startStubborn starts instance "stubborn", which ignores SIGTERM (so a
// stop takes stopTimeout, then SIGKILL), and waits until it is ready.
func startStubborn(t *testing.T, h *harness, stopTimeout time.Duration) Status {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	st, err := h.Start(ctxT(t), Spec{ID: "stubborn", Command: proctest.Command("ignore-sigterm", ready),
		Env: proctest.Env(), StopTimeout: stopTimeout})
	if err != nil {
		t.Fatal(err)
	}
	proctest.ReadFile(t, 20*time.Second, ready)
	return st
}

func TestStopKillsAfterTimeout(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	st := startStubborn(t, h, 300*time.Millisecond)
	begin := time.Now()
	final, err := h.Stop(ctx, "stubborn")
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(begin) < 300*time.Millisecond {
		t.Fatalf("stopped after %v, before the grace period", time.Since(begin))
	}
	if final.State != StateExited || final.Signal != "KILL" || final.Phase != PhaseSignaled {
		t.Fatalf("Stop() = %+v, want killed by KILL", final)
	}
	if proctest.Alive(st.PID) {
		t.Fatal("process alive after Stop")
	}
}

func TestStopLeavesNoGrandchild(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	file := filepath.Join(t.TempDir(), "grandchild")
	spec := Spec{ID: "family", Command: proctest.Command("spawn-grandchild", file), Env: proctest.Env(),
		StopTimeout: 5 * time.Second}
	st, err := h.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	gc, err := strconv.Atoi(proctest.ReadFile(t, 20*time.Second, file))
	if err != nil || !proctest.Alive(gc) {
		t.Fatalf("grandchild %d not running: %v", gc, err)
	}
	// The leader dies of SIGTERM at once; the grandchild ignores it and
	// must still be gone, without waiting for the grace period.
	if _, err := h.Stop(ctx, "family"); err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 20*time.Second, "grandchild gone", func() bool { return !proctest.Alive(gc) })
	if proctest.Alive(st.PID) {
		t.Fatal("leader alive after Stop")
	}
}

func TestCrashLeavesNoGrandchild(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	file := filepath.Join(t.TempDir(), "grandchild")
	spec := Spec{ID: "orphan", Command: proctest.Command("spawn-grandchild", file), Env: proctest.Env(),
		Restart: restart.Policy{Mode: restart.ModeNever}}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	gc, _ := strconv.Atoi(proctest.ReadFile(t, 20*time.Second, file))
	if err := h.Signal("orphan", "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	st, err := h.Wait(ctx, "orphan")
	if err != nil || st.Signal != "KILL" {
		t.Fatalf("Wait() = %+v, %v", st, err)
	}
	proctest.WaitFor(t, 20*time.Second, "grandchild gone", func() bool { return !proctest.Alive(gc) })
}

func TestSignals(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	spec := sleeper("sig")
	spec.Restart = restart.Policy{Mode: restart.ModeNever}
	st, err := h.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Signal("sig", "BOGUS"); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Signal(BOGUS) = %v, want ErrInvalidSpec", err)
	}
	if err := h.Signal("nope", "HUP"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Signal(nope) = %v, want ErrNotFound", err)
	}
	if err := h.Signal("sig", "STOP"); err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 10*time.Second, "phase stopped", func() bool {
		st, _ := h.Status("sig")
		return st.Phase == PhaseStopped
	})
	if err := h.Signal("sig", "CONT"); err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 10*time.Second, "phase continued", func() bool {
		st, _ := h.Status("sig")
		return st.Phase == PhaseContinued
	})
	if err := h.Signal("sig", "USR1"); err != nil { // Go's default for SIGUSR1: exit
		t.Fatal(err)
	}
	final, err := h.Wait(ctx, "sig")
	if err != nil || final.Signal != "USR1" || final.Reason != "signal USR1" || final.ExitCode != -1 {
		t.Fatalf("Wait() = %+v, %v", final, err)
	}
	if err := h.Signal("sig", "HUP"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Signal after exit = %v, want ErrNotRunning", err)
	}
	_ = st
}

func TestManualRestart(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	first, err := h.Start(ctx, sleeper("again"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := h.Restart(ctx, "again")
	if err != nil {
		t.Fatal(err)
	}
	if st.PID == first.PID || st.Restarts[restart.ReasonManual] != 1 || proctest.Alive(first.PID) {
		t.Fatalf("Restart() = %+v (first pid %d)", st, first.PID)
	}
	waitNotified(t, h.rec, "again", StateRunning, StateStopping, StateExited, StateStarting, StateRunning)
	// Only the stop phase of the restart is marked Restarting.
	restarted := h.rec.of("again")
	for _, st := range restarted {
		if want := st.State == StateStopping || st.State == StateExited; st.Restarting != want {
			t.Errorf("notified %s with Restarting %v, want %v", st.State, st.Restarting, want)
		}
	}
	// A plain stop afterwards is a stop, and once Notified returns the
	// handler has its last state.
	final, err := h.Stop(ctx, "again")
	if err != nil || final.State != StateExited || final.Restarting {
		t.Fatalf("Stop() = %+v, %v", final, err)
	}
	if err := h.Notified(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h.rec.states("again"); got[len(got)-1] != StateExited {
		t.Errorf("after Stop and Notified the handler's last state is %s", got[len(got)-1])
	}
	waitNotified(t, h.rec, "again", StateRunning, StateStopping, StateExited, StateStarting, StateRunning, StateStopping, StateExited)
	for _, st := range h.rec.of("again")[len(restarted):] {
		if st.Restarting {
			t.Errorf("stop notified %s with Restarting", st.State)
		}
	}
}

// TestRestartAbandoned: a Restart whose ctx ends while the process is
// still stopping starts nothing, so its stop is a stop after all: the
// handler gets the states again without the Restarting mark.
func TestRestartAbandoned(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	// The restart's stop outlasts the short context even if the machine
	// stalls for seconds.
	startStubborn(t, h, testtime.Scaled(3*time.Second))
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := h.Restart(short, "stubborn"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Restart with a short ctx = %v, want its deadline", err)
	}
	final, err := h.Wait(ctx, "stubborn") // SIGKILL after the stop timeout
	if err != nil || final.State != StateExited || final.Restarting {
		t.Fatalf("after an abandoned restart: %+v, %v", final, err)
	}
	if err := h.Notified(ctx); err != nil {
		t.Fatal(err)
	}
	got := h.rec.of("stubborn")
	if last := got[len(got)-1]; last.State != StateExited || last.Restarting {
		t.Errorf("handler's last state %s, Restarting %v; want an unmarked exited", last.State, last.Restarting)
	}
}

func TestShellExecs(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	spec := Spec{ID: "sh", Shell: proctest.Binary() + " sleep", Env: proctest.Env()}
	st, err := h.Start(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	// The shell replaced itself with the program: no extra layer.
	proctest.WaitFor(t, 10*time.Second, "shell exec", func() bool {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/cmdline")
		return strings.HasPrefix(string(b), proctest.Binary()+"\x00sleep")
	})
}

func TestMinUptime(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	spec := sleeper("slow")
	spec.MinUptime = 200 * time.Millisecond
	st, err := h.Start(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateStarting {
		t.Fatalf("state %s right after Start, want starting", st.State)
	}
	running := waitState(t, h.Supervisor, "slow", StateRunning)
	if running.Since.Sub(st.StartTime) < 200*time.Millisecond-10*time.Millisecond {
		t.Fatalf("running after %v, before MinUptime", running.Since.Sub(st.StartTime))
	}
}

func TestHealthChecks(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	dir := t.TempDir()
	// Each subtest's context starts when it runs: parallel subtests may wait
	// long for a slot on a loaded machine.
	t.Run("tcp started criterion", func(t *testing.T) {
		t.Parallel()
		ctx := ctxT(t)
		ln := filepath.Join(dir, "addr")
		// Find a free port by listening once, then let the workload take it.
		addr := freeAddr(t)
		spec := Spec{ID: "tcp", Command: proctest.Command("listen-port", addr, ln), Env: proctest.Env(),
			Health: &HealthCheck{Type: CheckTCP, Address: addr, Period: 50 * time.Millisecond}}
		if _, err := h.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		waitState(t, h.Supervisor, "tcp", StateRunning)
		hs := Spec{ID: "http", Command: proctest.Command("listen-port", freeAddr(t)), Env: proctest.Env(),
			Health: &HealthCheck{Type: CheckHTTP, URL: "http://" + addr + "/health", Period: 50 * time.Millisecond}}
		if _, err := h.Start(ctx, hs); err != nil {
			t.Fatal(err)
		}
		waitState(t, h.Supervisor, "http", StateRunning)
	})
	t.Run("exec failing restarts", func(t *testing.T) {
		t.Parallel()
		ctx := ctxT(t)
		flag := filepath.Join(dir, "healthy")
		if err := os.WriteFile(flag, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		spec := sleeper("unhealthy")
		spec.StopTimeout = 2 * time.Second
		spec.Restart = restart.Policy{NoBackoff: true}
		spec.Health = &HealthCheck{Type: CheckExec, Command: []string{"/bin/sh", "-c", "test -e " + flag},
			Period: 30 * time.Millisecond, FailureThreshold: 2}
		if _, err := h.Start(ctx, spec); err != nil {
			t.Fatal(err)
		}
		waitState(t, h.Supervisor, "unhealthy", StateRunning)
		if err := os.Remove(flag); err != nil {
			t.Fatal(err)
		}
		proctest.WaitFor(t, 20*time.Second, "health restart", func() bool {
			st, _ := h.Status("unhealthy")
			return st.Restarts[restart.ReasonHealth] >= 1
		})
		for _, st := range h.rec.of("unhealthy") {
			if st.State == StateBackoff && st.Reason != "health" {
				t.Fatalf("backoff reason %q, want health", st.Reason)
			}
		}
	})
}

// TestHealthReported (issue 17, item 6: health results were never shown):
// a failing check shows in Status.Health with the consecutive failures,
// and the StateHandler hears of it once per change of the message, not
// once per probe; a pass clears it (the move to running carries that).
func TestHealthReported(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	addr := freeAddr(t) // nothing listens: the tcp check is refused
	spec := sleeper("sick")
	spec.Health = &HealthCheck{Type: CheckTCP, Address: addr, Period: 20 * time.Millisecond, Timeout: 20 * time.Millisecond,
		FailureThreshold: 1000}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 20*time.Second, "5 consecutive health failures", func() bool {
		st, _ := h.Status("sick")
		return st.HealthFailures >= 5
	})
	st, _ := h.Status("sick")
	if st.State != StateStarting || !strings.Contains(st.Health, "tcp check: ") {
		t.Fatalf("status with a failing check: state %s, health %q", st.State, st.Health)
	}
	var told []string
	for _, s := range h.rec.of("sick") {
		if s.Health != "" && (len(told) == 0 || told[len(told)-1] != s.Health) {
			told = append(told, s.Health)
		} else if s.Health != "" {
			t.Fatalf("handler told of the same health message twice: %q", s.Health)
		}
	}
	if len(told) == 0 {
		t.Fatal("handler never told of the failing check")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	running := waitState(t, h.Supervisor, "sick", StateRunning)
	if running.Health != "" || running.HealthFailures != 0 {
		t.Fatalf("running after a pass: health %q (%d failures), want none", running.Health, running.HealthFailures)
	}
	ln.Close()
	proctest.WaitFor(t, 20*time.Second, "the running instance's failing check to be told", func() bool {
		all := h.rec.of("sick")
		last := all[len(all)-1]
		return last.State == StateRunning && last.Health != ""
	})
}

// TestExecCheckLeavesNoProcess: an exec check that times out is killed
// with its whole process group (not only the shell), and what a check that
// passed left in the background is killed too.
func TestExecCheckLeavesNoProcess(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, script string
		timeout      time.Duration
		pass         bool
	}{
		{"timeout", "sleep 300; true", 200 * time.Millisecond, false},
		{"background", "sleep 300 & exit 0", 10 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			mark := "VISOR_TEST_MARK=" + t.TempDir()
			t.Cleanup(func() {
				for _, pid := range markedPids(t, mark) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			})
			h := HealthCheck{Type: CheckExec, Command: []string{"/bin/sh", "-c", tc.script}}
			p, err := newProber(h, runAs{env: []string{"PATH=" + os.Getenv("PATH"), mark}, dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			err = probeWithin(context.Background(), p, tc.timeout)
			if (err == nil) != tc.pass {
				t.Fatalf("probe() = %v, want pass %v", err, tc.pass)
			}
			// It returns at the check's timeout or exit, not when the
			// script's sleep ends.
			if d := time.Since(began); d > testtime.Scaled(20*time.Second) {
				t.Fatalf("probe took %v: it waited for the script's background sleep", d)
			}
			proctest.WaitFor(t, 20*time.Second, "no process of the check left", func() bool {
				return len(markedPids(t, mark)) == 0
			})
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestRunAsUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("run-as needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	h := start(t, Config{})
	// The test binary may sit in a directory only root can enter: run a
	// system binary.
	sleep, err := lookPath("sleep", "", DefaultPath)
	if err != nil {
		t.Fatal(err)
	}
	spec := Spec{ID: "nobody", Command: []string{sleep, "600"}, User: "nobody", Dir: "/"}
	st, err := h.Start(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			if f[1] != nobody.Uid {
				t.Fatalf("uid %s, want %s", f[1], nobody.Uid)
			}
			return
		}
	}
	t.Fatal("no Uid line in /proc status")
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := sleeper("x")
	cases := []struct {
		name string
		edit func(*Spec)
	}{
		{"missing binary", func(s *Spec) { s.Command = []string{filepath.Join(dir, "missing")} }},
		{"binary not in path", func(s *Spec) { s.Command = []string{"visor-no-such-binary"} }},
		{"not executable", func(s *Spec) { s.Command = []string{noexec} }},
		{"directory as binary", func(s *Spec) { s.Command = []string{dir} }},
		{"unknown user", func(s *Spec) { s.User = "visor-no-such-user" }},
		{"unknown group", func(s *Spec) { s.User = "nobody"; s.Group = "visor-no-such-group" }},
		{"group without user", func(s *Spec) { s.Group = "nogroup" }},
		{"missing dir", func(s *Spec) { s.Dir = filepath.Join(dir, "missing") }},
		{"unknown signal", func(s *Spec) { s.StopSignal = "SIGFOO" }},
		{"stop signal STOP", func(s *Spec) { s.StopSignal = "STOP" }},
		{"stop signal SIGTSTP", func(s *Spec) { s.StopSignal = "SIGTSTP" }},
		{"stop signal CONT", func(s *Spec) { s.StopSignal = "cont" }},
		{"stop signal TTIN", func(s *Spec) { s.StopSignal = "TTIN" }},
		{"stop signal TTOU", func(s *Spec) { s.StopSignal = "SIGTTOU" }},
		{"negative stop timeout", func(s *Spec) { s.StopTimeout = -time.Second }},
		{"negative min uptime", func(s *Spec) { s.MinUptime = -time.Second }},
		{"negative restart delay", func(s *Spec) { s.Restart.InitialDelay = -time.Second }},
		{"bad restart mode", func(s *Spec) { s.Restart.Mode = "sometimes" }},
		{"negative health period", func(s *Spec) { s.Health = &HealthCheck{Type: CheckTCP, Address: "127.0.0.1:1", Period: -1} }},
		{"bad health type", func(s *Spec) { s.Health = &HealthCheck{Type: "ping"} }},
		{"bad id", func(s *Spec) { s.ID = "../etc" }},
		{"no command", func(s *Spec) { s.Command = nil }},
		{"command and shell", func(s *Spec) { s.Shell = "true" }},
	}
	if os.Geteuid() == 0 {
		// Valid on paper, refused by execve for the run-as user.
		private := filepath.Join(dir, "private")
		if err := os.WriteFile(private, []byte("#!/bin/sh\nexec sleep 600\n"), 0o700); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct {
			name string
			edit func(*Spec)
		}{"not executable by run-as user", func(s *Spec) { s.Command = []string{private}; s.User = "nobody"; s.Dir = "/" }})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := ok
			spec.Command = append([]string(nil), ok.Command...)
			tc.edit(&spec)
			_, err := h.Start(ctxT(t), spec)
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Start() = %v, want ErrInvalidSpec", err)
			}
			t.Logf("error: %v", err)
		})
	}
	if l := h.List(); len(l) != 0 {
		t.Fatalf("instances left behind: %+v", l)
	}
	if recs, _ := h.loadAll(); len(recs) != 0 {
		t.Fatalf("state records left behind: %+v", recs)
	}
	if _, err := h.Start(ctxT(t), ok); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
}

func TestLifecycleOutsideRun(t *testing.T) {
	t.Parallel()
	s, err := New(Config{StateDir: t.TempDir(), Cgroups: "none"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Start(ctx, sleeper("early")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start before Run = %v, want deadline exceeded", err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
	if _, err := s.Start(context.Background(), sleeper("late")); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Run = %v, want ErrStopped", err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("second Run() = nil, want error")
	}
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without StateDir = nil error")
	}
	if _, err := New(Config{StateDir: t.TempDir(), Cgroups: "v3"}); err == nil {
		t.Fatal("New with cgroups v3 = nil error")
	}
}
