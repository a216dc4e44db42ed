package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// sessionExecutor is the pipeline's ticketExecutor: the agent's execution
// of claimed tickets with session s.
type sessionExecutor struct {
	a *Agent
	s *registry.HostSession
}

func (e sessionExecutor) prepare(ctx context.Context, j *job) bool { return e.a.prepareStart(ctx, j) }

func (e sessionExecutor) execute(ctx context.Context, drain func() context.Context, j *job) {
	e.a.execute(ctx, drain, e.s, j)
}

// pipelineDeps is what the ticket pipeline of session s gets.
func (a *Agent) pipelineDeps(s *registry.HostSession) pipelineDeps {
	return pipelineDeps{
		log:         a.log,
		maxParallel: a.cfg.MaxParallel,
		session:     s,
		exec:        sessionExecutor{a: a, s: s},
		inflight:    a.inflight,
		adm:         a.adm,
		supervised:  a.sup.Has,
		startLimit:  a.startLimit,
		place:       a.place,
		counters: claimCounters{won: a.metrics.claimsWon, lost: a.metrics.claimsLost,
			conflicts: a.metrics.claimConflicts, batches: a.metrics.claimBatches},
	}
}

// execute runs a claimed ticket and completes or releases it. drain gives
// the context of a release when ctx ended meanwhile.
func (a *Agent) execute(ctx context.Context, drain func() context.Context, s *registry.HostSession, j *job) {
	t, inst := j.t, j.inst
	log := a.log.With("ticket", t.ID, "op", string(t.Op), "instance", inst.ID)
	log.Info("ticket claimed")
	var err error
	cancelled := false
	switch t.Op {
	case registry.TicketStart:
		cancelled, err = a.runStart(ctx, s, j)
	case registry.TicketStop:
		err = a.stop(ctx, s, t)
	case registry.TicketRestart:
		err = a.restart(ctx, s, t)
	case registry.TicketSignal:
		err = a.signal(ctx, s, t)
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

// runStart runs start ticket j, cancellable through a.starts; cancelled
// reports that it ended because of that.
func (a *Agent) runStart(ctx context.Context, s *registry.HostSession, j *job) (cancelled bool, err error) {
	id := j.inst.ID
	if id == "" {
		id = j.t.Instance
	}
	return a.starts.run(ctx, id, j.t.ID, func(ctx context.Context) error { return a.start(ctx, s, j) })
}

// stop runs a stop ticket: the instance stops for good and the ticket
// completes; its final state reaches the registry through the writer.
func (a *Agent) stop(ctx context.Context, s *registry.HostSession, t registry.Ticket) error {
	// A start still fetching its artifact (or about to start the process)
	// ends first: then the instance either never ran, or is the
	// supervisor's to stop.
	a.starts.cancel(ctx, t.Instance, "its stop was requested")
	st, err := a.sup.Stop(ctx, t.Instance)
	switch {
	case errors.Is(err, supervisor.ErrNotFound):
		// Nothing here to stop: record the instance as exited. The
		// ticket completes only once that is written (or the record is
		// gone), else it is released and tried again.
		inst, ierr := a.reg.Instance(ctx, t.Instance)
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
				now, rerr := a.reg.Instance(ctx, t.Instance)
				if !errors.Is(uerr, registry.ErrTransition) || rerr != nil || !now.State.Terminal() {
					return fmt.Errorf("stop: record the instance exited: %w", uerr)
				}
			}
		}
	case err != nil:
		return fmt.Errorf("stop: %w", err)
	default:
		a.ports.freeOf(st.ID, st)
	}
	a.flushInstance(ctx, t.Instance)
	return s.Complete(ctx, t)
}

// flushInstance waits until the supervisor's state changes so far have
// reached the state writer and id's latest state is in the registry, so
// that a ticket completed next is never seen done before its outcome.
func (a *Agent) flushInstance(ctx context.Context, id string) {
	if err := a.sup.Notified(ctx); err != nil {
		return
	}
	a.writer.flushOne(ctx, id)
}

func (a *Agent) restart(ctx context.Context, s *registry.HostSession, t registry.Ticket) error {
	if _, err := a.sup.Restart(ctx, t.Instance); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	// As for a stop: the new process's state is in the registry before
	// the ticket is done, so whoever waits for the ticket reads it.
	a.flushInstance(ctx, t.Instance)
	return s.Complete(ctx, t)
}

func (a *Agent) signal(ctx context.Context, s *registry.HostSession, t registry.Ticket) error {
	if err := a.sup.Signal(t.Instance, t.Signal); err != nil {
		return fmt.Errorf("signal %s: %w", t.Signal, err)
	}
	return s.Complete(ctx, t)
}
