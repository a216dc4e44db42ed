package agent

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// The state writer's unit tests run it on fakes of its own narrow
// interfaces (writerSession, instanceReader, endpointPublisher): no etcd.

// fakeWrite is one call the writer made on a fakeSession.
type fakeWrite struct {
	op     string // "update", "complete-with", "complete"
	ticket string
	inst   registry.Instance
}

// fakeSession records the writer's calls; fail, when set, decides each
// call's error (nil: success).
type fakeSession struct {
	lease clientv3.LeaseID
	mu    sync.Mutex
	calls []fakeWrite
	fail  func(w fakeWrite) error
}

func (s *fakeSession) record(w fakeWrite) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, w)
	if s.fail != nil {
		return s.fail(w)
	}
	return nil
}

func (s *fakeSession) UpdateInstance(_ context.Context, in registry.Instance) error {
	return s.record(fakeWrite{op: "update", inst: in})
}

func (s *fakeSession) CompleteWith(_ context.Context, t registry.Ticket, in registry.Instance) error {
	return s.record(fakeWrite{op: "complete-with", ticket: t.ID, inst: in})
}

func (s *fakeSession) Complete(_ context.Context, t registry.Ticket) error {
	return s.record(fakeWrite{op: "complete", ticket: t.ID})
}

func (s *fakeSession) Lease() clientv3.LeaseID { return s.lease }

func (s *fakeSession) writes() []fakeWrite {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fakeWrite(nil), s.calls...)
}

func (s *fakeSession) setFail(f func(w fakeWrite) error) {
	s.mu.Lock()
	s.fail = f
	s.mu.Unlock()
}

// fakeSessions is the writer's session source: set changes the session
// and closes the change channel, as the agent's setSession does.
type fakeSessions struct {
	mu  sync.Mutex
	cur writerSession
	ch  chan struct{}
}

func (f *fakeSessions) get() (writerSession, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, f.ch
}

func (f *fakeSessions) set(s *fakeSession) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s == nil {
		f.cur = nil
	} else {
		f.cur = s
	}
	close(f.ch)
	f.ch = make(chan struct{})
}

// fakeInstances answers Instance reads from a map.
type fakeInstances struct {
	mu   sync.Mutex
	recs map[string]registry.Instance
}

func (f *fakeInstances) Instance(_ context.Context, id string) (registry.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in, ok := f.recs[id]
	if !ok {
		return registry.Instance{}, registry.ErrNotFound
	}
	return in, nil
}

// fakeEndpoints records endpoint registrations: id -> registered.
type fakeEndpoints struct {
	mu  sync.Mutex
	reg map[string]bool
}

func (f *fakeEndpoints) Put(_ context.Context, e discovery.Endpoint, _ clientv3.LeaseID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reg[e.ID] = true
	return nil
}

func (f *fakeEndpoints) Delete(_ context.Context, _, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reg[id] = false
	return nil
}

func (f *fakeEndpoints) registered(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reg[id]
}

// writerRig is a running state writer on fakes.
type writerRig struct {
	w         *stateWriter
	sessions  *fakeSessions
	instances *fakeInstances
	endpoints *fakeEndpoints
	mu        sync.Mutex
	replaced  []string
}

func newWriterRig(t *testing.T) *writerRig {
	t.Helper()
	r := &writerRig{
		sessions:  &fakeSessions{ch: make(chan struct{})},
		instances: &fakeInstances{recs: map[string]registry.Instance{}},
		endpoints: &fakeEndpoints{reg: map[string]bool{}},
	}
	r.w = newStateWriter(writerDeps{
		host:      "host-a",
		addr:      "198.51.100.1",
		log:       hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: testWriter{t}}),
		session:   r.sessions.get,
		instances: r.instances,
		endpoints: r.endpoints,
		onReplaced: func(id string) {
			r.mu.Lock()
			r.replaced = append(r.replaced, id)
			r.mu.Unlock()
		},
		ticketToRunning: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "t"}),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.w.run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r
}

func (r *writerRig) replacedIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.replaced...)
}

// flush waits (bounded) until the writer has nothing pending.
func (r *writerRig) flush(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(20*time.Second))
	defer cancel()
	r.w.flush(ctx)
	if p, _ := r.w.pending(""); p && ctx.Err() != nil {
		r.w.mu.Lock()
		defer r.w.mu.Unlock()
		t.Fatalf("writer did not flush: queue %v queued %v busy %v dirty %v retryAt %v", r.w.queue, r.w.queued, r.w.busy, r.w.dirty, r.w.retryAt)
	}
}

func status(id string, st supervisor.State) supervisor.Status {
	return supervisor.Status{ID: id, State: st, PID: 42, Since: time.Now(), ExitCode: -1,
		Meta: map[string]string{metaApp: "demo", metaRev: "v1", metaProc: "web", metaPort: "8000", metaTicket: "t1"}}
}

// TestStateWriterOutageCoalescesAndCompletesTicket: while there is no
// session nothing is written and nothing is lost; once a session comes,
// the burst of transitions is one write of the latest state, which
// completes the start ticket in the same call and registers the endpoint;
// the instance's stop deregisters it.
func TestStateWriterOutageCoalescesAndCompletesTicket(t *testing.T) {
	r := newWriterRig(t)
	r.w.expect("i1", registry.Ticket{ID: "t1", Created: time.Now()})
	r.w.update("i1", status("i1", supervisor.StateStarting))
	r.w.update("i1", status("i1", supervisor.StateRunning))
	r.flush(t) // no session: returns at once, the state stays dirty
	if p, _ := r.w.pending("i1"); !p {
		t.Fatal("state not pending while there is no session")
	}

	s := &fakeSession{lease: 7}
	r.sessions.set(s)
	r.flush(t)
	got := s.writes()
	if len(got) != 1 || got[0].op != "complete-with" || got[0].ticket != "t1" ||
		got[0].inst.State != registry.InstanceRunning || got[0].inst.Host != "host-a" || got[0].inst.Port != 8000 {
		t.Fatalf("writes = %+v, want one complete-with of t1 in state running", got)
	}
	if !r.endpoints.registered("i1") {
		t.Fatal("running instance not registered as an endpoint")
	}

	r.w.update("i1", status("i1", supervisor.StateExited))
	r.flush(t)
	got = s.writes()
	if len(got) != 2 || got[1].op != "update" || got[1].inst.State != registry.InstanceExited {
		t.Fatalf("writes = %+v, want a plain update to exited after the ticket completed", got)
	}
	if r.endpoints.registered("i1") {
		t.Fatal("exited instance still registered as an endpoint")
	}
}

// TestStateWriterRetriesAfterBackoff: a write that fails for a reason
// that may pass is tried again by the writer's own timer, with no new
// state and no session change, and lands.
func TestStateWriterRetriesAfterBackoff(t *testing.T) {
	r := newWriterRig(t)
	s := &fakeSession{lease: 7}
	var failed sync.Once
	s.setFail(func(w fakeWrite) error {
		err := errors.New("etcdserver: request timed out")
		ok := true
		failed.Do(func() { ok = false })
		if ok {
			return nil
		}
		return err
	})
	r.sessions.set(s)
	r.w.update("i1", status("i1", supervisor.StateRunning))
	proctest.WaitFor(t, 3*writeRetryMax+5*time.Second, "the retried write", func() bool {
		return len(s.writes()) == 2
	})
	r.flush(t)
	r.w.mu.Lock()
	_, delay := r.w.retryDelay["i1"]
	r.w.mu.Unlock()
	if delay {
		t.Error("backoff not reset by the write that landed")
	}
}

// TestStateWriterNotHolder: a write refused because this host no longer
// holds the instance stops the local copy (once) when the registry gives
// it to another host, and drops its later states; when the record still
// names this host (our lease ended), the write waits for the next session
// and lands there.
func TestStateWriterNotHolder(t *testing.T) {
	t.Run("replaced", func(t *testing.T) {
		r := newWriterRig(t)
		r.instances.recs["i1"] = registry.Instance{ID: "i1", Host: "host-b", State: registry.InstanceRunning}
		s := &fakeSession{lease: 7, fail: func(fakeWrite) error { return registry.ErrNotHolder }}
		r.sessions.set(s)
		r.w.update("i1", status("i1", supervisor.StateRunning))
		proctest.WaitFor(t, 10*time.Second, "the replaced instance handed over", func() bool { return len(r.replacedIDs()) == 1 })
		r.w.update("i1", status("i1", supervisor.StateStopping))
		r.w.update("i1", status("i1", supervisor.StateExited))
		r.flush(t)
		if n := len(s.writes()); n != 1 {
			t.Errorf("%d writes, want 1: a replaced instance's later states are not the registry's", n)
		}
		if got := r.replacedIDs(); len(got) != 1 || got[0] != "i1" {
			t.Errorf("replaced = %v, want [i1] once", got)
		}
	})
	t.Run("lease ended", func(t *testing.T) {
		r := newWriterRig(t)
		r.instances.recs["i1"] = registry.Instance{ID: "i1", Host: "host-a", State: registry.InstanceRunning}
		old := &fakeSession{lease: 7, fail: func(fakeWrite) error { return registry.ErrNotHolder }}
		r.sessions.set(old)
		r.w.update("i1", status("i1", supervisor.StateRunning))
		proctest.WaitFor(t, 10*time.Second, "the refused write", func() bool { return len(old.writes()) == 1 })
		proctest.WaitFor(t, 10*time.Second, "the write waiting for a session", func() bool {
			r.w.mu.Lock()
			defer r.w.mu.Unlock()
			return r.w.dirty["i1"] && !r.w.busy["i1"]
		})
		next := &fakeSession{lease: 8}
		r.sessions.set(next)
		r.flush(t)
		if got := next.writes(); len(got) != 1 || got[0].inst.State != registry.InstanceRunning {
			t.Fatalf("next session's writes = %+v, want the running state", got)
		}
		if len(r.replacedIDs()) != 0 {
			t.Error("an instance still ours was handed over as replaced")
		}
	})
}

// TestStateWriterRefusedTransition: a write refused as an invalid
// transition is dropped, not retried, after the stored record is read
// again; if the stored record is terminal while the instance runs here,
// the local copy is handed over to be stopped, and a start ticket it
// carried completes all the same.
func TestStateWriterRefusedTransition(t *testing.T) {
	r := newWriterRig(t)
	r.instances.recs["i1"] = registry.Instance{ID: "i1", Host: "host-a", State: registry.InstanceExited}
	r.instances.recs["i2"] = registry.Instance{ID: "i2", Host: "host-a", State: registry.InstanceRunning}
	s := &fakeSession{lease: 7, fail: func(w fakeWrite) error {
		if w.op == "complete" {
			return nil
		}
		return registry.ErrTransition
	}}
	r.sessions.set(s)
	r.w.expect("i1", registry.Ticket{ID: "t1"})
	r.w.update("i1", status("i1", supervisor.StateRunning))
	r.w.update("i2", status("i2", supervisor.StateExited))
	r.flush(t)
	if got := r.replacedIDs(); len(got) != 1 || got[0] != "i1" {
		t.Fatalf("replaced = %v, want [i1] (ended in the registry, running here)", got)
	}
	completed := false
	for _, w := range s.writes() {
		completed = completed || (w.op == "complete" && w.ticket == "t1")
	}
	if !completed {
		t.Errorf("start ticket of the refused outcome not completed: %+v", s.writes())
	}
	r.w.mu.Lock()
	_, waiting := r.w.retryAt["i2"]
	r.w.mu.Unlock()
	if p, _ := r.w.pending("i2"); p || waiting {
		t.Errorf("refused write of i2 still pending (%v) or scheduled for a retry (%v)", p, waiting)
	}
}

// TestToInstanceReasonAndHealth: an instance in backoff says when it
// restarts ("exit code 3, restarting in 2.5s", issue 17: ps should show
// "restarting in 3 s"), a held restart does not; a failing health check
// goes into the record's Health.
func TestToInstanceReasonAndHealth(t *testing.T) {
	for _, tc := range []struct {
		name       string
		st         supervisor.Status
		reason     string
		wantHealth string
	}{
		{"backoff", supervisor.Status{State: supervisor.StateBackoff, Reason: "exit code 3", Backoff: 2468 * time.Millisecond}, "exit code 3, restarting in 2.5s", ""},
		{"long backoff", supervisor.Status{State: supervisor.StateBackoff, Reason: "health", Backoff: 61400 * time.Millisecond}, "health, restarting in 1m1s", ""},
		{"held", supervisor.Status{State: supervisor.StateBackoff, Reason: "exit code 1", Backoff: time.Second, Held: true}, "exit code 1", ""},
		{"running, unhealthy", supervisor.Status{State: supervisor.StateRunning, Health: "tcp check: refused"}, "", "tcp check: refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.st.ID = "i-1"
			got := toInstance("h1", tc.st)
			if got.Reason != tc.reason || got.Health != tc.wantHealth {
				t.Fatalf("reason %q health %q, want %q and %q", got.Reason, got.Health, tc.reason, tc.wantHealth)
			}
		})
	}
}
