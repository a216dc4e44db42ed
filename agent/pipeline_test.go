package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// The ticket pipeline's unit tests run it on fakes of its own narrow
// interfaces (pipelineSession, ticketExecutor): no etcd, no processes.

// fakeClaims is a pipelineSession: claims succeed unless verdict says
// otherwise; it records the batches and the unclaims.
type fakeClaims struct {
	mu        sync.Mutex
	batches   [][]string
	unclaimed []string
	verdict   func(t registry.Ticket, try int) error
	tries     map[string]int
}

func (f *fakeClaims) ClaimBatch(_ context.Context, ts []registry.Ticket) []registry.ClaimResult {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]registry.ClaimResult, len(ts))
	var batch []string
	for i, t := range ts {
		batch = append(batch, t.ID)
		f.tries[t.ID]++
		var err error
		if f.verdict != nil {
			err = f.verdict(t, f.tries[t.ID])
		}
		out[i] = registry.ClaimResult{Instance: registry.Instance{ID: t.Instance}, Err: err}
	}
	f.batches = append(f.batches, batch)
	return out
}

func (f *fakeClaims) Unclaim(ctx context.Context, t registry.Ticket, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	f.unclaimed = append(f.unclaimed, t.ID)
	return nil
}

func (f *fakeClaims) claimsOf(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tries[id]
}

func (f *fakeClaims) unclaims() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.unclaimed...)
}

// fakeExec is a ticketExecutor that records what it executes; tickets in
// hold block until released (or the session ends).
type fakeExec struct {
	mu       sync.Mutex
	executed []string
	hold     map[string]chan struct{}
	started  chan string // receives each ticket as its execution begins
}

func (e *fakeExec) prepare(context.Context, *job) bool { return false }

func (e *fakeExec) execute(ctx context.Context, _ func() context.Context, j *job) {
	e.mu.Lock()
	h := e.hold[j.t.ID]
	e.mu.Unlock()
	select {
	case e.started <- j.t.ID:
	default:
	}
	if h != nil {
		select {
		case <-h:
		case <-ctx.Done():
			return
		}
	}
	e.mu.Lock()
	e.executed = append(e.executed, j.t.ID)
	e.mu.Unlock()
}

func (e *fakeExec) done() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.executed...)
}

func (e *fakeExec) ran(id string) bool {
	for _, d := range e.done() {
		if d == id {
			return true
		}
	}
	return false
}

// pipelineRig is a pipeline on fakes, with the session context to end it.
type pipelineRig struct {
	p      *pipeline
	claims *fakeClaims
	exec   *fakeExec
	adm    *admission
	inf    *inflightTickets
	cancel context.CancelFunc
	closed bool
}

func newPipelineRig(t *testing.T, maxParallel, capacity int, claimDelay time.Duration) *pipelineRig {
	t.Helper()
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: testWriter{t}})
	r := &pipelineRig{
		claims: &fakeClaims{tries: map[string]int{}},
		exec:   &fakeExec{hold: map[string]chan struct{}{}, started: make(chan string, 64)},
		adm:    newAdmission(capacity, registry.HostResources{}, 0),
		inf:    newInflightTickets(),
	}
	counter := func() prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}) }
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.p = newPipeline(ctx, pipelineDeps{
		log:         log,
		maxParallel: maxParallel,
		session:     r.claims,
		exec:        r.exec,
		inflight:    r.inf,
		adm:         r.adm,
		supervised:  func(string) bool { return false },
		startLimit:  rate.NewLimiter(rate.Inf, 1),
		place:       &placer{host: "h", claimDelay0: claimDelay, log: log},
		counters:    claimCounters{won: counter(), lost: counter(), conflicts: counter(), batches: counter()},
	})
	t.Cleanup(r.close)
	return r
}

// close ends the session and waits for the pipeline to drain.
func (r *pipelineRig) close() {
	if r.closed {
		return
	}
	r.closed = true
	r.cancel()
	r.p.close()
}

// offer marks t in flight and offers it, as the ticket watch does.
func (r *pipelineRig) offer(t registry.Ticket) {
	if r.inf.mark(t.ID) {
		r.p.offer(t)
	}
}

func startTicket(id string) registry.Ticket {
	return registry.Ticket{ID: id, Op: registry.TicketStart, Instance: "i-" + id, Host: "h"}
}

func stopTicket(id string) registry.Ticket {
	return registry.Ticket{ID: id, Op: registry.TicketStop, Instance: "i-" + id, Host: "h"}
}

// TestPipelineClaimsAndExecutes: offered tickets are claimed (in batches),
// executed once each (a ticket offered again while in flight is not taken
// twice), and leave the pipeline: no longer in flight, their
// reservations settled.
func TestPipelineClaimsAndExecutes(t *testing.T) {
	r := newPipelineRig(t, 8, 0, 0)
	// A ticket re-delivered while in flight is not offered twice.
	release := make(chan struct{})
	r.exec.hold["held"] = release
	r.offer(startTicket("held"))
	proctest.WaitFor(t, 20*time.Second, "the held ticket executing", func() bool {
		select {
		case id := <-r.exec.started:
			return id == "held"
		default:
			return false
		}
	})
	r.offer(startTicket("held"))
	var want []string
	for i := range 40 {
		tk := startTicket(fmt.Sprintf("t%02d", i))
		if i%5 == 0 {
			tk = stopTicket(tk.ID)
		}
		want = append(want, tk.ID)
		r.offer(tk)
	}
	proctest.WaitFor(t, 20*time.Second, "40 tickets executed", func() bool { return len(r.exec.done()) == 40 })
	close(release)
	want = append(want, "held")
	proctest.WaitFor(t, 20*time.Second, "the held ticket executed", func() bool { return r.exec.ran("held") })
	r.close()
	for _, id := range want {
		if n := r.claims.claimsOf(id); n != 1 {
			t.Errorf("ticket %s claimed %d times, want 1", id, n)
		}
		if !r.exec.ran(id) {
			t.Errorf("ticket %s not executed", id)
		}
		if !r.inf.mark(id) {
			t.Errorf("ticket %s still in flight after it ran", id)
		}
	}
	if n := len(r.exec.done()); n != 41 {
		t.Errorf("%d executions, want 41", n)
	}
	if n := r.adm.liveCount(); n != 0 {
		t.Errorf("%d reservations left after every start ran (none supervised)", n)
	}
	if won := testutil.ToFloat64(r.p.counters.won); won != 41 {
		t.Errorf("claims won = %v, want 41", won)
	}
}

// TestPipelineClaimOutcomes: a ticket another host claimed is not
// executed and gives its reservation back; a claim whose outcome is
// unknown (no answer) is sent again until it has one, and runs once.
func TestPipelineClaimOutcomes(t *testing.T) {
	r := newPipelineRig(t, 4, 0, 0)
	r.claims.verdict = func(tk registry.Ticket, try int) error {
		switch {
		case tk.ID == "taken":
			return registry.ErrClaimed
		case tk.ID == "flaky" && try == 1:
			return errors.New("etcdserver: request timed out")
		}
		return nil
	}
	r.offer(startTicket("taken"))
	r.offer(startTicket("flaky"))
	proctest.WaitFor(t, 20*time.Second, "the flaky claim retried and run", func() bool { return r.exec.ran("flaky") })
	proctest.WaitFor(t, 20*time.Second, "the taken ticket out of the pipeline", func() bool {
		if !r.inf.mark("taken") {
			return false
		}
		r.inf.unmark("taken")
		return true
	})
	r.close()
	if r.exec.ran("taken") {
		t.Error("a ticket claimed by another host was executed")
	}
	if n := r.claims.claimsOf("flaky"); n != 2 {
		t.Errorf("flaky claim sent %d times, want 2", n)
	}
	if n := r.adm.liveCount(); n != 0 {
		t.Errorf("%d reservations left", n)
	}
	if c := testutil.ToFloat64(r.p.counters.conflicts); c != 1 {
		t.Errorf("claim conflicts = %v, want 1", c)
	}
}

// TestPipelineControlNotBehindStarts: with every start executor busy, a
// stop ticket still runs at once on a control executor.
func TestPipelineControlNotBehindStarts(t *testing.T) {
	r := newPipelineRig(t, 1, 0, 0)
	release := make(chan struct{})
	r.exec.hold["s1"], r.exec.hold["s2"] = release, release
	r.offer(startTicket("s1"))
	r.offer(startTicket("s2"))
	proctest.WaitFor(t, 20*time.Second, "the first start executing", func() bool {
		select {
		case id := <-r.exec.started:
			return id == "s1" || id == "s2"
		default:
			return false
		}
	})
	r.offer(stopTicket("stop"))
	proctest.WaitFor(t, 20*time.Second, "the stop executed while the starts wait", func() bool { return r.exec.ran("stop") })
	if r.exec.ran("s1") || r.exec.ran("s2") {
		t.Fatal("a held start ran")
	}
	close(release)
	proctest.WaitFor(t, 20*time.Second, "both starts executed", func() bool { return r.exec.ran("s1") && r.exec.ran("s2") })
}

// TestPipelineShutdownUnclaims: when the session ends, claimed tickets no
// executor has started are unclaimed (for another host or the next
// session), the one under way is cut off, and close returns with nothing
// left in flight.
func TestPipelineShutdownUnclaims(t *testing.T) {
	r := newPipelineRig(t, 1, 0, 0)
	r.exec.hold["s1"] = make(chan struct{}) // never released
	r.offer(startTicket("s1"))
	proctest.WaitFor(t, 20*time.Second, "s1 executing", func() bool {
		select {
		case id := <-r.exec.started:
			return id == "s1"
		default:
			return false
		}
	})
	r.offer(startTicket("s2"))
	r.offer(startTicket("s3"))
	proctest.WaitFor(t, 20*time.Second, "s2 and s3 claimed", func() bool {
		return r.claims.claimsOf("s2") == 1 && r.claims.claimsOf("s3") == 1
	})
	r.close()
	got := r.claims.unclaims()
	if len(got) != 2 || got[0] == got[1] || (got[0] != "s2" && got[0] != "s3") || (got[1] != "s2" && got[1] != "s3") {
		t.Errorf("unclaimed %v, want s2 and s3", got)
	}
	if r.exec.ran("s1") {
		t.Error("the held start counted as run")
	}
	for _, id := range []string{"s1", "s2", "s3"} {
		if !r.inf.mark(id) {
			t.Errorf("ticket %s still in flight after close", id)
		}
	}
}

// TestPipelineAbandonAndFull: a ticket waiting out its claim delay is
// abandoned without a claim when another host's claim shows up; on a full
// host a start is not claimed but kept for when room frees up.
func TestPipelineAbandonAndFull(t *testing.T) {
	t.Run("abandon", func(t *testing.T) {
		r := newPipelineRig(t, 2, 0, time.Hour)
		tk := registry.Ticket{ID: "late", Op: registry.TicketStart, Instance: "i-late"} // untargeted: waits
		r.offer(tk)
		r.inf.abandon(tk.ID)
		proctest.WaitFor(t, 20*time.Second, "the abandoned ticket out of the pipeline", func() bool {
			if !r.inf.mark(tk.ID) {
				return false
			}
			r.inf.unmark(tk.ID)
			return true
		})
		if n := r.claims.claimsOf(tk.ID); n != 0 {
			t.Errorf("abandoned ticket claimed %d times", n)
		}
	})
	t.Run("full", func(t *testing.T) {
		r := newPipelineRig(t, 2, 1, 0)
		r.exec.hold["first"] = make(chan struct{})
		r.offer(startTicket("first"))
		proctest.WaitFor(t, 20*time.Second, "first claimed", func() bool { return r.claims.claimsOf("first") == 1 })
		r.offer(startTicket("second"))
		proctest.WaitFor(t, 20*time.Second, "second kept for later", func() bool {
			got := r.adm.takeFitting("h", func() bool { return false })
			return len(got) == 0 && r.inf.mark("second")
		})
		if n := r.claims.claimsOf("second"); n != 0 {
			t.Errorf("start claimed %d times on a full host", n)
		}
		r.inf.unmark("second")
		close(r.exec.hold["first"])
		proctest.WaitFor(t, 20*time.Second, "room for the kept ticket", func() bool {
			got := r.adm.takeFitting("h", func() bool { return false })
			return len(got) == 1 && got[0].ID == "second"
		})
	})
}
