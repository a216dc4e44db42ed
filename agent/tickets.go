package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/restart"
)

// ticketSlots bounds the tickets an agent works on: those waiting out
// their claim delay, and those executing (MaxParallel). A claim holds no
// execution slot: if waiting or claiming did, a burst of tickets would fill
// the slots, the ticket loop would stop reading the watch, other hosts'
// claims would not be seen, and waits that should be abandoned would end
// in doomed claim transactions instead; and this host's own claims would
// reach etcd late, so that other hosts' backup claims collide with them.
// A claimed ticket then waits for a slot (its instance shows claimed).
type ticketSlots struct {
	waiting, running chan struct{}
}

func newTicketSlots(parallel int) *ticketSlots {
	return &ticketSlots{waiting: make(chan struct{}, 16*parallel), running: make(chan struct{}, parallel)}
}

// wait enters the waiting set; false if ctx ended first.
func (q *ticketSlots) wait(ctx context.Context) bool {
	select {
	case q.waiting <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// leave leaves the waiting set.
func (q *ticketSlots) leave() { <-q.waiting }

// run takes an execution slot; false (and no slot) if ctx ended first.
func (q *ticketSlots) run(ctx context.Context) bool {
	select {
	case q.running <- struct{}{}:
		if ctx.Err() != nil {
			<-q.running
			return false
		}
		return true
	case <-ctx.Done():
		return false
	}
}

// done gives an execution slot back.
func (q *ticketSlots) done() { <-q.running }

// handle claims ticket t after its claim delay, then executes it in one of
// q's execution slots. wait ends early when another host claims t first
// (or ctx ends).
func (a *Agent) handle(ctx, wait context.Context, s *registry.HostSession, t registry.Ticket, q *ticketSlots) {
	seen := time.Now()
	for d := a.claimDelay(t); d > 0; {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-wait.Done():
			timer.Stop()
		}
		if wait.Err() != nil {
			break
		}
		// The backup step may have grown meanwhile (etcd got busy).
		d = a.claimDelay(t) - time.Since(seen)
	}
	q.leave()
	a.claiming(t.ID)
	if wait.Err() != nil {
		a.metrics.claimsLost.Inc()
		return
	}
	sent := time.Now()
	inst, err := s.Claim(ctx, t)
	a.noteClaimLatency(time.Since(sent))
	switch {
	case errors.Is(err, registry.ErrClaimed), errors.Is(err, registry.ErrTicketChanged),
		errors.Is(err, registry.ErrTicketDone), errors.Is(err, registry.ErrNotFound):
		a.metrics.claimsLost.Inc()
		a.metrics.claimConflicts.Inc()
		a.log.Debug("ticket taken by another host", "ticket", t.ID, "error", err)
		return
	case err != nil:
		if ctx.Err() == nil {
			a.log.Warn("claim ticket", "ticket", t.ID, "error", err)
		}
		return
	}
	if !q.run(ctx) {
		// Shutting down (or the lease is gone) before a slot was free.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = s.Release(rctx, t, "agent shutting down before the ticket was started")
		return
	}
	defer q.done()
	a.metrics.claimsWon.Inc()
	log := a.log.With("ticket", t.ID, "op", string(t.Op), "instance", inst.ID)
	log.Info("ticket claimed")

	switch t.Op {
	case registry.TicketStart:
		err = a.start(ctx, s, t, inst)
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
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = s.Release(rctx, t, "agent shutting down before the ticket was done")
		return
	}
	log.Warn("ticket failed; releasing it", "error", err)
	if rerr := s.Release(ctx, t, err.Error()); rerr != nil {
		log.Warn("release ticket", "error", rerr)
	}
}

// start runs a start ticket: resolve the revision and proc type, fetch the
// artifact, pick a port and start the process. The ticket completes when
// the instance first reaches running (or a terminal state), written by the
// state writer in the same transaction as that state.
func (a *Agent) start(ctx context.Context, s *registry.HostSession, t registry.Ticket, inst registry.Instance) error {
	if inst.ID == "" {
		inst.ID = t.Instance
	}
	spec, port, err := a.buildSpec(ctx, t, inst)
	if err != nil {
		return err
	}
	a.writer.expect(inst.ID, t)
	if _, err := a.sup.Start(ctx, spec); err != nil {
		a.writer.unexpect(inst.ID)
		a.ports.Free(port, inst.ID)
		if errors.Is(err, supervisor.ErrExists) {
			// Already running here (a re-delivered ticket): done.
			return s.Complete(ctx, t)
		}
		return fmt.Errorf("start: %w", err)
	}
	return nil
}

// buildSpec turns a start ticket into a supervisor.Spec.
func (a *Agent) buildSpec(ctx context.Context, t registry.Ticket, inst registry.Instance) (supervisor.Spec, int, error) {
	l, err := a.reg.Launch(ctx, t.App, t.Rev, t.Proc)
	if err != nil {
		return supervisor.Spec{}, 0, err
	}
	rev, proc, appEnv := l.Revision, l.ProcType, l.Env
	dir := rev.Dir
	if rev.ArtifactURL != "" {
		dir, err = a.artifacts.Dir(ctx, rev.ArtifactURL, rev.SHA256)
		if err != nil {
			return supervisor.Spec{}, 0, err
		}
	} else if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return supervisor.Spec{}, 0, fmt.Errorf("%w: revision directory %q is not on this host", ErrArtifact, dir)
	}
	command := proc.Command
	if command == "" {
		if command, err = procfileCommand(dir, t.Proc); err != nil {
			return supervisor.Spec{}, 0, err
		}
	}
	port, err := a.ports.Allocate(inst.ID)
	if err != nil {
		return supervisor.Spec{}, 0, err
	}

	env := make(map[string]string, len(appEnv)+len(proc.Env)+8)
	for k, v := range appEnv {
		env[k] = v
	}
	for k, v := range proc.Env {
		env[k] = v
	}
	env["PORT"] = strconv.Itoa(port)
	env["VISOR_APP"] = t.App
	env["VISOR_REV"] = t.Rev
	env["VISOR_PROC"] = t.Proc
	env["VISOR_INSTANCE"] = inst.ID
	env["VISOR_HOST"] = a.cfg.HostID
	if _, ok := env["PATH"]; !ok {
		env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
	}
	if _, ok := env["HOME"]; !ok {
		env["HOME"] = dir
	}
	argv, err := resolveCommand(command, dir, env["PATH"])
	if err != nil {
		a.ports.Free(port, inst.ID)
		return supervisor.Spec{}, 0, err
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	envList := make([]string, 0, len(keys))
	for _, k := range keys {
		envList = append(envList, k+"="+env[k])
	}

	spec := supervisor.Spec{
		ID:          inst.ID,
		Command:     argv,
		Env:         envList,
		Dir:         dir,
		User:        proc.User,
		Group:       proc.Group,
		StopSignal:  proc.StopSignal,
		StopTimeout: time.Duration(proc.StopTimeout),
		MinUptime:   time.Duration(proc.MinUptime),
		Restart: restart.Policy{
			Mode:         proc.Restart.Policy,
			InitialDelay: time.Duration(proc.Restart.InitialDelay),
			MaxDelay:     time.Duration(proc.Restart.MaxDelay),
			ResetAfter:   time.Duration(proc.Restart.ResetAfter),
			MaxRestarts:  proc.Restart.MaxRestarts,
		},
		Limits: cgroup.Limits{
			MemoryBytes: proc.Limits.MemoryBytes,
			CPUMillis:   proc.Limits.CPUMillis,
			Pids:        proc.Limits.Pids,
		},
		Meta: map[string]string{
			metaApp:     t.App,
			metaRev:     t.Rev,
			metaProc:    t.Proc,
			metaPort:    strconv.Itoa(port),
			metaTicket:  t.ID,
			metaCreated: t.Created.Format(time.RFC3339Nano),
		},
	}
	if argv == nil {
		spec.Shell = command
	}
	if h := proc.Health; h != nil {
		hc := &supervisor.HealthCheck{
			Type:             h.Type,
			Command:          h.Command,
			Period:           time.Duration(h.Period),
			Timeout:          time.Duration(h.Timeout),
			FailureThreshold: h.FailureThreshold,
		}
		switch h.Type {
		case "tcp":
			hc.Address = "127.0.0.1:" + strconv.Itoa(port)
		case "http":
			hc.URL = "http://127.0.0.1:" + strconv.Itoa(port) + h.Path
		}
		spec.Health = hc
	}
	return spec, port, nil
}

// stop runs a stop ticket: the instance stops for good and the ticket
// completes; its final state reaches the registry through the writer.
func (a *Agent) stop(ctx context.Context, s *registry.HostSession, t registry.Ticket) error {
	st, err := a.sup.Stop(ctx, t.Instance)
	switch {
	case errors.Is(err, supervisor.ErrNotFound):
		// Nothing here to stop: record the instance as exited.
		inst, ierr := a.reg.Instance(ctx, t.Instance)
		if ierr == nil && !inst.State.Terminal() {
			inst.State = registry.InstanceExited
			inst.Reason = "stopped (no process on host)"
			inst.Since = time.Now()
			if uerr := s.UpdateInstance(ctx, inst); uerr != nil {
				a.log.Warn("record stopped instance", "instance", t.Instance, "error", uerr)
			}
		}
	case err != nil:
		return fmt.Errorf("stop: %w", err)
	default:
		if p, perr := strconv.Atoi(st.Meta[metaPort]); perr == nil {
			a.ports.Free(p, st.ID)
		}
	}
	a.writer.flushOne(ctx, t.Instance)
	return s.Complete(ctx, t)
}

func (a *Agent) restart(ctx context.Context, s *registry.HostSession, t registry.Ticket) error {
	if _, err := a.sup.Restart(ctx, t.Instance); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return s.Complete(ctx, t)
}

func (a *Agent) signal(ctx context.Context, s *registry.HostSession, t registry.Ticket) error {
	if err := a.sup.Signal(t.Instance, t.Signal); err != nil {
		return fmt.Errorf("signal %s: %w", t.Signal, err)
	}
	return s.Complete(ctx, t)
}
