package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// The executor's unit tests run it on fakes of its own narrow interfaces
// (execSession, execSupervisor, instanceReader, instanceFlusher,
// portReleaser, ticketStarter), which all write to one call log, so that
// a test asserts what the executor did and in which order: no etcd, no
// processes.

// callLog is the calls the fakes received, in order.
type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, fmt.Sprintf(format, args...))
}

func (l *callLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// fakeExecSession is an execSession; the errors are what its calls return.
type fakeExecSession struct {
	log                    *callLog
	completeErr, updateErr error
	releaseErr, unclaimErr error

	mu            sync.Mutex // guards the fields below
	unclaimCtxErr []error    // the error of each Unclaim's context
	lastUpdate    registry.Instance
}

func (f *fakeExecSession) Complete(_ context.Context, t registry.Ticket) error {
	f.log.add("complete %s", t.ID)
	return f.completeErr
}

func (f *fakeExecSession) Release(ctx context.Context, t registry.Ticket, reason string) error {
	f.log.add("release %s: %s", t.ID, reason)
	return f.releaseErr
}

func (f *fakeExecSession) Unclaim(ctx context.Context, t registry.Ticket, reason string) error {
	f.mu.Lock()
	f.unclaimCtxErr = append(f.unclaimCtxErr, ctx.Err())
	f.mu.Unlock()
	f.log.add("unclaim %s: %s", t.ID, reason)
	return f.unclaimErr
}

func (f *fakeExecSession) UpdateInstance(_ context.Context, in registry.Instance) error {
	f.mu.Lock()
	f.lastUpdate = in
	f.mu.Unlock()
	f.log.add("update %s %s: %s", in.ID, in.State, in.Reason)
	return f.updateErr
}

// fakeExecSupervisor is an execSupervisor.
type fakeExecSupervisor struct {
	log                         *callLog
	stopErr, restartErr, sigErr error
}

func (f *fakeExecSupervisor) Stop(_ context.Context, id string) (supervisor.Status, error) {
	f.log.add("sup stop %s", id)
	return supervisor.Status{ID: id, State: supervisor.StateExited}, f.stopErr
}

func (f *fakeExecSupervisor) Restart(_ context.Context, id string) (supervisor.Status, error) {
	f.log.add("sup restart %s", id)
	return supervisor.Status{ID: id}, f.restartErr
}

func (f *fakeExecSupervisor) Signal(id, sig string) error {
	f.log.add("sup signal %s %s", id, sig)
	return f.sigErr
}

func (f *fakeExecSupervisor) Notified(context.Context) error {
	f.log.add("sup notified")
	return nil
}

// fakeInstanceReads is an instanceReader answering from reads, one per call
// (the last repeated).
type fakeInstanceReads struct {
	log   *callLog
	mu    sync.Mutex
	reads []instanceRead
}

type instanceRead struct {
	in  registry.Instance
	err error
}

func (f *fakeInstanceReads) Instance(_ context.Context, id string) (registry.Instance, error) {
	f.log.add("read %s", id)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reads) == 0 {
		return registry.Instance{}, registry.ErrNotFound
	}
	r := f.reads[0]
	if len(f.reads) > 1 {
		f.reads = f.reads[1:]
	}
	return r.in, r.err
}

// fakeFlusher is an instanceFlusher and a portReleaser.
type fakeFlusher struct{ log *callLog }

func (f fakeFlusher) flushOne(_ context.Context, id string) { f.log.add("flush %s", id) }

func (f fakeFlusher) freeOf(id string, _ supervisor.Status) { f.log.add("free port %s", id) }

// fakeStarter is a ticketStarter: start returns err, or with block waits
// (after sending on entered) until its context ends and returns its cause.
type fakeStarter struct {
	log     *callLog
	fetch   bool
	err     error
	block   bool
	entered chan struct{}
}

func (f *fakeStarter) prepare(_ context.Context, j *job) bool {
	f.log.add("prepare %s", j.t.ID)
	return f.fetch
}

func (f *fakeStarter) start(ctx context.Context, s ticketCompleter, j *job) error {
	f.log.add("start %s", j.t.ID)
	if s == nil {
		return errors.New("start without a session")
	}
	if f.block {
		close(f.entered)
		<-ctx.Done()
		return fmt.Errorf("fetch artifact: %w", context.Cause(ctx))
	}
	return f.err
}

// execFixture is an executor on fakes sharing one call log.
type execFixture struct {
	log     *callLog
	session *fakeExecSession
	sup     *fakeExecSupervisor
	insts   *fakeInstanceReads
	starter *fakeStarter
	e       *executor
}

func newExecFixture(t *testing.T) *execFixture {
	l := &callLog{}
	f := &execFixture{log: l, session: &fakeExecSession{log: l}, sup: &fakeExecSupervisor{log: l},
		insts: &fakeInstanceReads{log: l}, starter: &fakeStarter{log: l, entered: make(chan struct{})}}
	f.e = &executor{
		log:       hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: testWriter{t}}),
		session:   f.session,
		sup:       f.sup,
		instances: f.insts,
		writer:    fakeFlusher{l},
		ports:     fakeFlusher{l},
		starts:    newStartRuns(),
		starter:   f.starter,
	}
	return f
}

// run executes a ticket of op on instance i1 as ticket t1.
func (f *execFixture) run(ctx context.Context, op registry.TicketOp, mod func(*registry.Ticket)) {
	tk := registry.Ticket{ID: "t1", Op: op, Instance: "i1", App: "web", Rev: "v1", Proc: "web"}
	if mod != nil {
		mod(&tk)
	}
	f.e.execute(ctx, context.Background, &job{t: tk, inst: registry.Instance{ID: "i1"}})
}

var _ ticketExecutor = (*executor)(nil)

func TestExecutorTickets(t *testing.T) {
	boom := errors.New("boom")
	running := registry.Instance{ID: "i1", App: "web", State: registry.InstanceRunning}
	exited := registry.Instance{ID: "i1", App: "web", State: registry.InstanceExited}
	for _, tc := range []struct {
		name  string
		op    registry.TicketOp
		setup func(f *execFixture)
		mod   func(*registry.Ticket)
		want  []string
	}{
		{name: "stop of a supervised instance frees its port, flushes its state, then completes",
			op:   registry.TicketStop,
			want: []string{"sup stop i1", "free port i1", "sup notified", "flush i1", "complete t1"}},
		{name: "stop with no process records the instance exited before completing",
			op: registry.TicketStop,
			setup: func(f *execFixture) {
				f.sup.stopErr = supervisor.ErrNotFound
				f.insts.reads = []instanceRead{{in: running}}
			},
			want: []string{"sup stop i1", "read i1", "update i1 exited: stopped (no process on host)",
				"sup notified", "flush i1", "complete t1"}},
		{name: "stop with no process and no record completes",
			op:    registry.TicketStop,
			setup: func(f *execFixture) { f.sup.stopErr = supervisor.ErrNotFound },
			want:  []string{"sup stop i1", "read i1", "sup notified", "flush i1", "complete t1"}},
		{name: "stop with no process and an ended record writes nothing and completes",
			op: registry.TicketStop,
			setup: func(f *execFixture) {
				f.sup.stopErr = supervisor.ErrNotFound
				f.insts.reads = []instanceRead{{in: exited}}
			},
			want: []string{"sup stop i1", "read i1", "sup notified", "flush i1", "complete t1"}},
		{name: "stop whose record cannot be read is released",
			op: registry.TicketStop,
			setup: func(f *execFixture) {
				f.sup.stopErr = supervisor.ErrNotFound
				f.insts.reads = []instanceRead{{err: boom}}
			},
			want: []string{"sup stop i1", "read i1", "release t1: stop: read instance: boom"}},
		{name: "stop whose exit write lost to the instance ending meanwhile completes",
			op: registry.TicketStop,
			setup: func(f *execFixture) {
				f.sup.stopErr = supervisor.ErrNotFound
				f.session.updateErr = registry.ErrTransition
				f.insts.reads = []instanceRead{{in: running}, {in: exited}}
			},
			want: []string{"sup stop i1", "read i1", "update i1 exited: stopped (no process on host)", "read i1",
				"sup notified", "flush i1", "complete t1"}},
		{name: "stop whose exit write fails while the instance still runs is released",
			op: registry.TicketStop,
			setup: func(f *execFixture) {
				f.sup.stopErr = supervisor.ErrNotFound
				f.session.updateErr = registry.ErrTransition
				f.insts.reads = []instanceRead{{in: running}}
			},
			want: []string{"sup stop i1", "read i1", "update i1 exited: stopped (no process on host)", "read i1",
				"release t1: stop: record the instance exited: " + registry.ErrTransition.Error()}},
		{name: "stop the supervisor fails is released",
			op:    registry.TicketStop,
			setup: func(f *execFixture) { f.sup.stopErr = boom },
			want:  []string{"sup stop i1", "release t1: stop: boom"}},
		{name: "restart flushes the new state, then completes",
			op:   registry.TicketRestart,
			want: []string{"sup restart i1", "sup notified", "flush i1", "complete t1"}},
		{name: "restart the supervisor fails is released",
			op:    registry.TicketRestart,
			setup: func(f *execFixture) { f.sup.restartErr = supervisor.ErrNotFound },
			want:  []string{"sup restart i1", "release t1: restart: " + supervisor.ErrNotFound.Error()}},
		{name: "signal completes",
			op:   registry.TicketSignal,
			mod:  func(t *registry.Ticket) { t.Signal = "HUP" },
			want: []string{"sup signal i1 HUP", "complete t1"}},
		{name: "signal the supervisor fails is released",
			op:    registry.TicketSignal,
			mod:   func(t *registry.Ticket) { t.Signal = "HUP" },
			setup: func(f *execFixture) { f.sup.sigErr = boom },
			want:  []string{"sup signal i1 HUP", "release t1: signal HUP: boom"}},
		{name: "unknown op is released",
			op:   registry.TicketOp("bogus"),
			want: []string{`release t1: unknown ticket op "bogus"`}},
		{name: "start is the starter's; it completes the ticket itself",
			op:   registry.TicketStart,
			want: []string{"start t1"}},
		{name: "start that fails is released",
			op:    registry.TicketStart,
			setup: func(f *execFixture) { f.starter.err = boom },
			want:  []string{"start t1", "release t1: boom"}},
		{name: "etcd not answering gives the ticket back without a release",
			op:    registry.TicketRestart,
			setup: func(f *execFixture) { f.session.completeErr = rpctypes.ErrLeaderChanged },
			want: []string{"sup restart i1", "sup notified", "flush i1", "complete t1",
				"unclaim t1: " + rpctypes.ErrLeaderChanged.Error()}},
		{name: "a start etcd did not answer for is given back",
			op:    registry.TicketStart,
			setup: func(f *execFixture) { f.starter.err = fmt.Errorf("read launch: %w", rpctypes.ErrTimeout) },
			want:  []string{"start t1", "unclaim t1: read launch: " + rpctypes.ErrTimeout.Error()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newExecFixture(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			f.run(context.Background(), tc.op, tc.mod)
			if got := f.log.list(); !slices.Equal(got, tc.want) {
				t.Errorf("calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

// TestExecutorShutdown: a ticket whose work fails because the session's
// context ended is given back (unclaimed, not released: no attempt
// counted), with the drain context, which is still live.
func TestExecutorShutdown(t *testing.T) {
	f := newExecFixture(t)
	f.sup.restartErr = context.Canceled
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.run(ctx, registry.TicketRestart, nil)
	want := []string{"sup restart i1", "unclaim t1: agent shutting down before the ticket was done"}
	if got := f.log.list(); !slices.Equal(got, want) {
		t.Errorf("calls %q, want %q", got, want)
	}
	if len(f.session.unclaimCtxErr) != 1 || f.session.unclaimCtxErr[0] != nil {
		t.Errorf("unclaim contexts' errors %v, want one live (drain) context", f.session.unclaimCtxErr)
	}
}

// TestExecutorPrepare: prepare is the starter's.
func TestExecutorPrepare(t *testing.T) {
	for _, fetch := range []bool{false, true} {
		f := newExecFixture(t)
		f.starter.fetch = fetch
		if got := f.e.prepare(context.Background(), &job{t: registry.Ticket{ID: "t1"}}); got != fetch {
			t.Errorf("prepare = %v, want the starter's %v", got, fetch)
		}
	}
}

// TestExecutorStopCancelsStart: a stop of an instance whose start is
// under way (fetching its artifact) cancels that start and waits for it to
// end before stopping: the start's ticket is released naming the stop,
// and the stop then finds no process and completes.
func TestExecutorStopCancelsStart(t *testing.T) {
	f := newExecFixture(t)
	f.starter.block = true
	f.sup.stopErr = supervisor.ErrNotFound
	startDone := make(chan struct{})
	go func() {
		defer close(startDone)
		f.e.execute(context.Background(), context.Background,
			&job{t: registry.Ticket{ID: "t-start", Op: registry.TicketStart, Instance: "i1"}, inst: registry.Instance{ID: "i1"}})
	}()
	select {
	case <-f.starter.entered:
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("the start never began")
	}
	f.e.execute(context.Background(), context.Background,
		&job{t: registry.Ticket{ID: "t-stop", Op: registry.TicketStop, Instance: "i1"}, inst: registry.Instance{ID: "i1"}})
	select {
	case <-startDone:
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("the start's execution did not end")
	}
	// The start's process was never handed over when the stop asked the
	// supervisor (starts.cancel waited for the start to end); the
	// start's release may come before or after the stop's calls.
	var stop []string
	released := 0
	for _, c := range f.log.list()[1:] {
		if c == "release t-start: start cancelled: its stop was requested" {
			released++
			continue
		}
		stop = append(stop, c)
	}
	if first := f.log.list()[0]; first != "start t-start" || released != 1 {
		t.Errorf("calls %q: want the start first and its release once, naming the stop", f.log.list())
	}
	want := []string{"sup stop i1", "read i1", "sup notified", "flush i1", "complete t-stop"}
	if !slices.Equal(stop, want) {
		t.Errorf("the stop's calls:\n  %s\nwant:\n  %s", strings.Join(stop, "\n  "), strings.Join(want, "\n  "))
	}
}
