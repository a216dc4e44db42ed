package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/proctest"
)

// markedPids returns the live processes whose environment holds mark.
func markedPids(t testing.TB, mark string) []int {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join(d, "environ"))
		if err != nil || !bytes.Contains(env, []byte(mark)) || !proctest.Alive(pid) {
			continue
		}
		out = append(out, pid)
	}
	slices.Sort(out)
	return out
}

// TestStartRacesShutdown: Starts (and a Restart, and a Restore) go on while
// Run's ctx is cancelled. None may panic; each either succeeds or fails
// with ErrStopped; and, Run leaving processes running, every process left
// is one the journal knows: a new supervisor re-adopts every live process
// of the test, and stopping those leaves none.
func TestStartRacesShutdown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := ctxT(t)
	mark := "VISOR_TEST_MARK=" + dir
	spec := func(id string) Spec {
		s := sleeper(id)
		s.Env = append(s.Env, mark)
		return s
	}

	// Processes for the racing Restore to adopt.
	h1 := start(t, Config{StateDir: dir})
	for i := range 5 {
		if _, err := h1.Start(ctx, spec(fmt.Sprintf("old-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	h1.stopRun(t)

	h2 := start(t, Config{StateDir: dir})
	if _, err := h2.Start(ctx, spec("r")); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		started []int // pids of successful Starts
		errs    []error
	)
	enough := make(chan struct{}) // closed once some Starts succeeded
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				st, err := h2.Start(ctx, spec(fmt.Sprintf("s-%d-%d", g, i)))
				mu.Lock()
				if err != nil {
					if !errors.Is(err, ErrStopped) {
						errs = append(errs, fmt.Errorf("Start: %w", err))
					}
					mu.Unlock()
					return
				}
				started = append(started, st.PID)
				if len(started) == 16 {
					close(enough)
				}
				mu.Unlock()
			}
		})
	}
	wg.Go(func() {
		for {
			if _, err := h2.Restart(ctx, "r"); err != nil {
				if !errors.Is(err, ErrStopped) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("Restart: %w", err))
					mu.Unlock()
				}
				return
			}
		}
	})
	wg.Go(func() {
		<-enough
		if _, err := h2.Restore(ctx); err != nil && !errors.Is(err, ErrStopped) {
			mu.Lock()
			errs = append(errs, fmt.Errorf("Restore: %w", err))
			mu.Unlock()
		}
	})
	<-enough
	h2.stopRun(t)
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}

	// Every process left running is known to the journal.
	h3 := start(t, Config{StateDir: dir})
	restored, err := h3.Restore(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var adopted []int
	for _, st := range restored {
		if st.Adopted && st.PID > 0 {
			adopted = append(adopted, st.PID)
		}
	}
	slices.Sort(adopted)
	// (An adopted pid may be dying: Restart's stop signal, sent while Run
	// was shutting down.)
	for _, pid := range markedPids(t, mark) {
		if !slices.Contains(adopted, pid) {
			t.Errorf("process %d left running unknown to the journal (adopted %v)", pid, adopted)
		}
	}
	for _, pid := range started {
		if !slices.Contains(adopted, pid) {
			t.Errorf("pid %d of a successful Start not adopted", pid)
		}
	}
	for _, st := range h3.List() {
		if _, err := h3.Stop(ctx, st.ID); err != nil {
			t.Fatal(err)
		}
	}
	proctest.WaitFor(t, 10*time.Second, "no process of the test left", func() bool {
		return len(markedPids(t, mark)) == 0
	})
}

// gateWriter swallows log output, except that the first write containing
// every string of match signals entered and blocks until release is closed.
type gateWriter struct {
	match            []string
	once             sync.Once
	entered, release chan struct{}
}

func (w *gateWriter) Write(p []byte) (int, error) {
	if !slices.ContainsFunc(w.match, func(m string) bool { return !bytes.Contains(p, []byte(m)) }) {
		w.once.Do(func() {
			close(w.entered)
			<-w.release
		})
	}
	return len(p), nil
}

// TestStopDuringStartPublish: a Stop that finds an instance Start has
// published but not yet spawned must not be lost. Start is held in that
// window (its log line about limits blocks); the instance must be locked
// there, so a Stop waits for the spawn and then stops the process.
func TestStopDuringStartPublish(t *testing.T) {
	t.Parallel()
	gate := &gateWriter{match: []string{"limits not enforced", "instance=early-stop"}, entered: make(chan struct{}), release: make(chan struct{})}
	h := start(t, Config{Logger: hclog.New(&hclog.LoggerOptions{Output: gate, Level: hclog.Info})})
	ctx := ctxT(t)
	spec := sleeper("early-stop")
	spec.Limits.Pids = 100 // not enforced without cgroups: Start logs it
	started := make(chan error, 1)
	go func() {
		_, err := h.Start(ctx, spec)
		started <- err
	}()
	<-gate.entered
	in, err := h.lookup("early-stop")
	if err != nil {
		close(gate.release)
		t.Fatal(err)
	}
	if in.mu.TryLock() {
		st := in.statusLocked()
		in.mu.Unlock()
		t.Errorf("published instance unlocked before its spawn (state %q): a Stop now would be lost", st.State)
	}
	stopped := make(chan Status, 1)
	go func() {
		st, err := h.Stop(ctx, "early-stop")
		if err != nil {
			t.Errorf("Stop() = %+v, %v", st, err)
		}
		stopped <- st
	}()
	close(gate.release)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	st := <-stopped
	if st.State != StateExited {
		t.Fatalf("Stop() = %+v, want exited", st)
	}
}
