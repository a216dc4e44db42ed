package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// execSession is what the executor writes with (*registry.HostSession).
type execSession interface {
	ticketCompleter
	Release(ctx context.Context, t registry.Ticket, reason string) error
	Unclaim(ctx context.Context, t registry.Ticket, reason string) error
	UpdateInstance(ctx context.Context, in registry.Instance) error
}

// execSupervisor is what stop, restart and signal tickets need of the
// supervisor (*supervisor.Supervisor).
type execSupervisor interface {
	Stop(ctx context.Context, id string) (supervisor.Status, error)
	Restart(ctx context.Context, id string) (supervisor.Status, error)
	Signal(id, sig string) error
	// Notified returns once the state changes made so far have been
	// handed to the agent (InstanceStateChanged), or ctx ended.
	Notified(ctx context.Context) error
}

// instanceFlusher writes an instance's latest state to the registry
// (*stateWriter).
type instanceFlusher interface {
	flushOne(ctx context.Context, id string)
}

// portReleaser gives back the port of a stopped instance (*portAllocator).
type portReleaser interface {
	freeOf(id string, st supervisor.Status)
}

// ticketStarter runs start tickets (*starter, start.go).
type ticketStarter interface {
	// prepare reads what start job j needs and reports whether it must
	// wait for an artifact first (see ticketExecutor).
	prepare(ctx context.Context, j *job) (fetch bool)
	// start starts the instance of job j; the ticket completes when the
	// instance first reaches running, or at once (with s) when the
	// supervisor already has it.
	start(ctx context.Context, s ticketCompleter, j *job) error
}

// executor is the pipeline's ticketExecutor for one session: it runs
// claimed tickets with the few parts they need and completes, releases
// or gives back each one.
type executor struct {
	log       hclog.Logger
	session   execSession
	sup       execSupervisor
	instances instanceReader // a stop with no process here reads the record
	writer    instanceFlusher
	ports     portReleaser
	starts    *startRuns // starts under way, cancelled by their stop
	starter   ticketStarter
}

// executor returns the executor of session s.
func (a *Agent) executor(s *registry.HostSession) *executor {
	return &executor{log: a.log, session: s, sup: a.sup, instances: a.reg, writer: a.writer,
		ports: a.ports, starts: a.starts, starter: a.starter()}
}

// pipelineDeps is what the ticket pipeline of session s gets.
func (a *Agent) pipelineDeps(s *registry.HostSession) pipelineDeps {
	return pipelineDeps{
		log:         a.log,
		maxParallel: a.cfg.MaxParallel,
		session:     s,
		exec:        a.executor(s),
		inflight:    a.inflight,
		adm:         a.adm,
		supervised:  a.sup.Has,
		startLimit:  a.startLimit,
		place:       a.place,
		counters: claimCounters{won: a.metrics.claimsWon, lost: a.metrics.claimsLost,
			conflicts: a.metrics.claimConflicts, batches: a.metrics.claimBatches},
	}
}

func (e *executor) prepare(ctx context.Context, j *job) bool { return e.starter.prepare(ctx, j) }

// execute runs a claimed ticket and completes or releases it. drain gives
// the context of a release when ctx ended meanwhile.
func (e *executor) execute(ctx context.Context, drain func() context.Context, j *job) {
	t, inst, s := j.t, j.inst, e.session
	log := e.log.With("ticket", t.ID, "op", string(t.Op), "instance", inst.ID)
	log.Info("ticket claimed")
	var err error
	cancelled := false
	switch t.Op {
	case registry.TicketStart:
		cancelled, err = e.runStart(ctx, j)
	case registry.TicketStop:
		err = e.stop(ctx, t)
	case registry.TicketRestart:
		err = e.restart(ctx, t)
	case registry.TicketSignal:
		err = e.signal(ctx, t)
	default:
		err = fmt.Errorf("unknown ticket op %q", t.Op)
	}
	if err == nil {
		return
	}
	if ctx.Err() != nil {
		// Shutdown or lease loss: the claim dies with the lease (or is
		// released below), and another host or our next session retries.
		_ = s.Unclaim(drain(), t, "agent shutting down before the ticket was done")
		return
	}
	if cancelled {
		// The instance's stop was requested, or the ticket is gone: the
		// release retires the start (registry: the instance exits
		// without having run), or finds nothing left to release.
		log.Info("start cancelled; releasing the ticket", "reason", err)
		if rerr := s.Release(ctx, t, err.Error()); rerr != nil && !errors.Is(rerr, registry.ErrTicketDone) {
			log.Warn("release ticket", "error", rerr)
		}
		return
	}
	if registry.Unavailable(err) {
		// etcd did not answer (a leader change, a timeout): that says
		// nothing about this host, so the ticket goes back without an
		// attempt counted or this host excluded, and is claimed again
		// (here or elsewhere) once etcd answers. Counting it excluded the
		// only live host of a test/fault run for good.
		log.Warn("ticket not done, etcd did not answer; giving it back", "error", err)
		if rerr := s.Unclaim(ctx, t, err.Error()); rerr != nil {
			log.Warn("give the ticket back", "error", rerr)
		}
		return
	}
	log.Warn("ticket failed; releasing it", "error", err)
	if rerr := s.Release(ctx, t, err.Error()); rerr != nil {
		log.Warn("release ticket", "error", rerr)
	}
}

// A start under way on this host, until its process is handed to the
// supervisor: a stop of its instance or the deletion of its ticket
// cancels it (see startRuns.cancel).
type startRun struct {
	ticket string
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// errStartCancelled is the cause a cancelled start reports.
var errStartCancelled = errors.New("start cancelled")

// startRuns are the starts under way on this host, by instance.
type startRuns struct {
	mu   sync.Mutex // guards runs
	runs map[string]*startRun
}

func newStartRuns() *startRuns { return &startRuns{runs: make(map[string]*startRun)} }

// run runs start, which starts instance id for ticket, with a context that
// cancel and cancelTicket end; cancelled reports that it ended because of
// that (and not because ctx ended).
func (r *startRuns) run(ctx context.Context, id, ticket string, start func(context.Context) error) (cancelled bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	run := &startRun{ticket: ticket, cancel: cancel, done: make(chan struct{})}
	r.mu.Lock()
	r.runs[id] = run
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		if r.runs[id] == run {
			delete(r.runs, id)
		}
		r.mu.Unlock()
		close(run.done)
	}()
	err = start(sctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(sctx), errStartCancelled) {
		return true, context.Cause(sctx)
	}
	return false, err
}

// cancel cancels the start of instance id under way here, if any, and
// waits (bounded by ctx) until it has ended, so that whatever comes next
// sees either no process or one the supervisor has.
func (r *startRuns) cancel(ctx context.Context, id string, why string) {
	r.mu.Lock()
	run := r.runs[id]
	r.mu.Unlock()
	if run == nil {
		return
	}
	run.cancel(fmt.Errorf("%w: %s", errStartCancelled, why))
	select {
	case <-run.done:
	case <-ctx.Done():
	}
}

// cancelTicket cancels the start under way for ticket id (deleted:
// completed, or cancelled by a scale-down or an app's removal) without
// waiting for it. A start that already handed its process to the
// supervisor is not affected.
func (r *startRuns) cancelTicket(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, run := range r.runs {
		if run.ticket == id {
			run.cancel(fmt.Errorf("%w: its ticket was deleted", errStartCancelled))
		}
	}
}

// runStart runs start ticket j, cancellable through e.starts; cancelled
// reports that it ended because of that.
func (e *executor) runStart(ctx context.Context, j *job) (cancelled bool, err error) {
	id := j.inst.ID
	if id == "" {
		id = j.t.Instance
	}
	return e.starts.run(ctx, id, j.t.ID, func(ctx context.Context) error { return e.starter.start(ctx, e.session, j) })
}

// stop runs a stop ticket: the instance stops for good and the ticket
// completes; its final state reaches the registry through the writer.
func (e *executor) stop(ctx context.Context, t registry.Ticket) error {
	s := e.session
	// A start still fetching its artifact (or about to start the process)
	// ends first: then the instance either never ran, or is the
	// supervisor's to stop.
	e.starts.cancel(ctx, t.Instance, "its stop was requested")
	st, err := e.sup.Stop(ctx, t.Instance)
	switch {
	case errors.Is(err, supervisor.ErrNotFound):
		// Nothing here to stop: record the instance as exited. The
		// ticket completes only once that is written (or the record is
		// gone), else it is released and tried again.
		inst, ierr := e.instances.Instance(ctx, t.Instance)
		switch {
		case errors.Is(ierr, registry.ErrNotFound):
		case ierr != nil:
			return fmt.Errorf("stop: read instance: %w", ierr)
		case !inst.State.Terminal():
			inst.State = registry.InstanceExited
			inst.Reason = "stopped (no process on host)"
			inst.Since = time.Now()
			if uerr := s.UpdateInstance(ctx, inst); uerr != nil {
				// The instance may have ended meanwhile (a start cancelled
				// by this stop retires it as not started): that is the
				// outcome wanted.
				now, rerr := e.instances.Instance(ctx, t.Instance)
				if !errors.Is(uerr, registry.ErrTransition) || rerr != nil || !now.State.Terminal() {
					return fmt.Errorf("stop: record the instance exited: %w", uerr)
				}
			}
		}
	case err != nil:
		return fmt.Errorf("stop: %w", err)
	default:
		e.ports.freeOf(st.ID, st)
	}
	e.flushInstance(ctx, t.Instance)
	return s.Complete(ctx, t)
}

// flushInstance waits until the supervisor's state changes so far have
// reached the state writer and id's latest state is in the registry, so
// that a ticket completed next is never seen done before its outcome.
func (e *executor) flushInstance(ctx context.Context, id string) {
	if err := e.sup.Notified(ctx); err != nil {
		return
	}
	e.writer.flushOne(ctx, id)
}

// restart runs a restart ticket: the supervisor restarts the instance and
// the ticket completes once its new state is in the registry.
func (e *executor) restart(ctx context.Context, t registry.Ticket) error {
	if _, err := e.sup.Restart(ctx, t.Instance); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	// As for a stop: the new process's state is in the registry before
	// the ticket is done, so whoever waits for the ticket reads it.
	e.flushInstance(ctx, t.Instance)
	return e.session.Complete(ctx, t)
}

// signal runs a signal ticket: the supervisor signals the instance and
// the ticket completes.
func (e *executor) signal(ctx context.Context, t registry.Ticket) error {
	if err := e.sup.Signal(t.Instance, t.Signal); err != nil {
		return fmt.Errorf("signal %s: %w", t.Signal, err)
	}
	return e.session.Complete(ctx, t)
}
