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
