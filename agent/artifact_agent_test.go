package agent

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"path/filepath"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// artifactApp registers app (see fixture.app) with a revision v2 whose
// artifact is at url.
func (f *fixture) artifactApp(t *testing.T, app, url, sum string) {
	t.Helper()
	must(t, f.app(app, "sleep 1h"))
	_, err := f.reg.RegisterRevision(f.ctx, registry.Revision{App: app, Name: "v2", ArtifactURL: url, SHA256: sum})
	must(t, err)
}

// appTicket returns the ticket of app (the first found) and whether there
// is one.
func (f *fixture) appTicket(t *testing.T, app string) (registry.Ticket, bool) {
	t.Helper()
	ts, err := f.reg.Tickets(f.ctx)
	must(t, err)
	for _, tk := range ts {
		if tk.App == app {
			return tk, true
		}
	}
	return registry.Ticket{}, false
}

// stopWithin cancels the agent and fails the test unless Run returns
// within its shutdown limit (about 5 s; scaled, with room).
func (ta *testAgent) stopWithin(t *testing.T) {
	t.Helper()
	ta.cancel()
	select {
	case err := <-ta.done:
		if err != nil {
			t.Errorf("agent Run: %v", err)
		}
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("agent did not stop within its shutdown limit")
	}
	ta.done = nil
}

// TestAgentHungArtifact: artifact servers that accept and never answer
// hold neither the ticket pipeline (with 2 executors, two hung starts used
// to starve everything) nor the agent's shutdown; a scale to 0 cancels a
// hung start; a fifo source is refused at once.
func TestAgentHungArtifact(t *testing.T) {
	f := newFixture(t)
	h := newHungServer(t)
	sum := strings.Repeat("ab", 32)
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) {
		c.StopOnExit = true
		c.MaxParallel = 2
		// Only cancellation may end these fetches.
		c.ArtifactConnectTimeout, c.ArtifactTimeout = time.Hour, time.Hour
	})
	for _, app := range []string{"hung-a", "hung-b"} {
		f.artifactApp(t, app, h.url()+"?"+app, sum)
		_, err := f.reg.Scale(f.ctx, app, "v2", "web", 1)
		must(t, err)
	}
	h.waitFor(t, "both hung fetches connected", func(conns, _ int) bool { return conns == 2 })

	fifo := filepath.Join(t.TempDir(), "fifo")
	must(t, syscall.Mkfifo(fifo, 0o600))
	f.artifactApp(t, "fifo", "file://"+fifo, sum)
	_, err := f.reg.Scale(f.ctx, "fifo", "v2", "web", 1)
	must(t, err)
	proctest.WaitFor(t, 30*time.Second, "the fifo start released with its reason", func() bool {
		tk, ok := f.appTicket(t, "fifo")
		return ok && tk.Holder == "" && strings.Contains(strings.Join(tk.Reasons, ";"), "is a fifo")
	})

	// Other apps' starts proceed while both fetches hang: one from a
	// directory, one from an artifact that is there.
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	path, goodSum := makeArtifact(t, map[string]string{"README": "hello\n"})
	f.artifactApp(t, "good", "file://"+path, goodSum)
	_, err = f.reg.Scale(f.ctx, "good", "v2", "web", 1)
	must(t, err)
	f.waitRunning(t, "demo", 1)
	f.waitRunning(t, "good", 1)
	for _, app := range []string{"hung-a", "hung-b"} {
		tk, ok := f.appTicket(t, app)
		if !ok || tk.Holder != "host-a" {
			t.Fatalf("%s: ticket %+v, want it held by host-a while its fetch hangs", app, tk)
		}
	}

	// Scale 0 cancels the hung start: the instance exits without having
	// run, its tickets go and the fetch's connection is closed.
	_, err = f.reg.Scale(f.ctx, "hung-a", "v2", "web", 0)
	must(t, err)
	proctest.WaitFor(t, 30*time.Second, "hung-a stopped without tickets left", func() bool {
		insts, err := f.reg.AppInstances(f.ctx, "hung-a")
		must(t, err)
		for _, in := range insts {
			if in.State != registry.InstanceExited {
				return false
			}
		}
		_, ok := f.appTicket(t, "hung-a")
		return len(insts) > 0 && !ok
	})
	h.waitFor(t, "hung-a's connection closed", func(_, closed int) bool { return closed == 1 })
	if _, ok := a.Supervisor().Status(firstInstance(t, f, "hung-a")); ok {
		t.Fatal("hung-a's instance reached the supervisor")
	}

	// Shutdown with hung-b still fetching ends in time, closing it too.
	a.stopWithin(t)
	h.waitFor(t, "hung-b's connection closed", func(_, closed int) bool { return closed == 2 })
	if tk, ok := f.appTicket(t, "hung-b"); !ok || tk.Holder != "" {
		t.Fatalf("hung-b: ticket %+v after shutdown, want it there and free", tk)
	}
}

func firstInstance(t *testing.T, f *fixture, app string) string {
	t.Helper()
	insts, err := f.reg.AppInstances(f.ctx, app)
	must(t, err)
	if len(insts) == 0 {
		t.Fatalf("%s has no instance", app)
	}
	return insts[0].ID
}

// TestAgentHungArtifactTimesOut: a fetch that never ends is given up after
// ArtifactTimeout and the ticket released with that reason, not held.
func TestAgentHungArtifactTimesOut(t *testing.T) {
	f := newFixture(t)
	h := newHungServer(t)
	f.startAgent(t, "host-a", t.TempDir(), func(c *Config) {
		c.StopOnExit = true
		c.ArtifactConnectTimeout, c.ArtifactTimeout = time.Hour, 300*time.Millisecond
	})
	f.artifactApp(t, "hung", h.url(), strings.Repeat("ab", 32))
	_, err := f.reg.Scale(f.ctx, "hung", "v2", "web", 1)
	must(t, err)
	proctest.WaitFor(t, 30*time.Second, "the hung start released with the timeout as reason", func() bool {
		tk, ok := f.appTicket(t, "hung")
		if !ok {
			insts, _ := f.reg.AppInstances(f.ctx, "hung")
			return len(insts) == 1 && insts[0].State == registry.InstanceFailed && strings.Contains(insts[0].Reason, "artifact_timeout")
		}
		return tk.Holder == "" && strings.Contains(strings.Join(tk.Reasons, ";"), "artifact_timeout") && contains(tk.FailedHosts, "host-a")
	})
}
