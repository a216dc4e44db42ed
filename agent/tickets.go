package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/restart"
)

// pipeline takes the tickets this agent may claim through three stages:
//
//   - a goroutine per ticket waits out its claim delay (see placement.go)
//     and gives up when another host's claim shows up; it only waits on
//     timers, so its stack stays small;
//   - MaxParallel/8 claimers send the claims, each up to
//     registry.MaxClaimBatch tickets that are waiting together in one
//     round trip (see claimLoop);
//   - MaxParallel executors run the claimed start tickets, no faster
//     than the host's start rate (Config.StartRate, a token bucket);
//     stop, restart and signal tickets have executors of their own
//     (controlExecutors), so under a burst of starts the control path
//     (scale down, stop, drain) never queues behind them.
//
// Only start tickets wait for a slot of the first stage; when all are
// taken they queue in a backlog that a feeder drains, so the ticket watch
// is never blocked and a stop ticket is seen at once. Control tickets
// are targeted at this host and claimed without delay.
//
// Waiting and claiming take no execution slot: if they did, a burst of
// tickets would fill the slots, the ticket loop would stop reading the
// watch, other hosts' claims would go unseen and waits that should be
// abandoned would end in doomed claim transactions; and this host's own
// claims would reach etcd late, so other hosts' backup claims would
// collide with them. A claimed ticket waits for an executor (its instance
// shows claimed). The claimers and executors are long-lived, so the deep
// stacks of a claim (gRPC) and a start (fork/exec) are grown once, not
// once per ticket.
type pipeline struct {
	a               *Agent
	ctx             context.Context // the session
	s               *registry.HostSession
	slot            chan struct{} // bounds start tickets waiting out their delay
	claimCh, execCh chan *job
	ctlCh           chan *job // claimed stop, restart and signal tickets

	backlogMu sync.Mutex
	backlog   []registry.Ticket // start tickets waiting for a slot
	backlogCh chan struct{}     // signalled when backlog grows

	waiters, claimers, executors, feeder sync.WaitGroup
	// fetchers are the start tickets waiting for their artifact, off the
	// executors (see execLoop).
	fetchers sync.WaitGroup

	drainOnce   sync.Once
	drainCtx    context.Context // bounds releases at shutdown; see drain
	drainCancel context.CancelFunc
}

// job is one ticket in the pipeline.
type job struct {
	t       registry.Ticket
	wait    context.Context // ends when another host claims t, or the session ends
	abandon context.CancelFunc
	inst    registry.Instance // as claimed

	// For a start, set by prepareStart: the launch read, or why it failed,
	// and the group the release is handed to (-1: root's own release).
	launch    *registry.Launch
	launchErr error
	gid       int
}

func (a *Agent) newPipeline(ctx context.Context, s *registry.HostSession) *pipeline {
	n := a.cfg.MaxParallel
	p := &pipeline{a: a, ctx: ctx, s: s, slot: make(chan struct{}, 16*n),
		claimCh: make(chan *job, n), execCh: make(chan *job, 16*n), ctlCh: make(chan *job, 16*n),
		backlogCh: make(chan struct{}, 1)}
	for range claimers(n) {
		p.claimers.Go(p.claimLoop)
	}
	for range n {
		p.executors.Go(func() { p.execLoop(p.execCh) })
	}
	for range controlExecutors(n) {
		p.executors.Go(func() { p.execLoop(p.ctlCh) })
	}
	p.feeder.Go(p.feed)
	return p
}

// controlExecutors is how many executors run stop, restart and signal
// tickets beside maxParallel start executors: a quarter, at least 4.
func controlExecutors(maxParallel int) int { return max(4, maxParallel/4) }

// offer starts the wait of a ticket marked in flight. It never blocks: a
// start ticket that finds every slot taken (16 * MaxParallel start
// tickets waiting already) joins the backlog; a control ticket needs no
// slot.
func (p *pipeline) offer(t registry.Ticket) {
	if t.Op != registry.TicketStart {
		p.wait(t, false)
		return
	}
	select {
	case p.slot <- struct{}{}:
		p.wait(t, true)
	default:
		p.backlogMu.Lock()
		p.backlog = append(p.backlog, t)
		p.backlogMu.Unlock()
		select {
		case p.backlogCh <- struct{}{}:
		default:
		}
	}
}

// feed moves backlogged start tickets into free slots until the session
// ends; then it lets go of what is left.
func (p *pipeline) feed() {
	for {
		p.backlogMu.Lock()
		var t registry.Ticket
		ok := len(p.backlog) > 0
		if ok {
			t = p.backlog[0]
			p.backlog = p.backlog[1:]
		}
		p.backlogMu.Unlock()
		if !ok {
			select {
			case <-p.backlogCh:
				continue
			case <-p.ctx.Done():
				return
			}
		}
		select {
		case p.slot <- struct{}{}:
			p.wait(t, true)
		case <-p.ctx.Done():
			p.a.unmarkInflight(t.ID)
			return // close lets go of the rest
		}
	}
}

// wait runs ticket t's claim delay in a waiter goroutine and hands it to
// the claimers; slotted says it holds a slot to give back.
func (p *pipeline) wait(t registry.Ticket, slotted bool) {
	wait, abandon := context.WithCancel(p.ctx)
	p.a.setAbandon(t.ID, abandon)
	j := &job{t: t, wait: wait, abandon: abandon}
	p.waiters.Go(func() {
		if slotted {
			defer func() { <-p.slot }()
		}
		if !p.a.waitClaimDelay(j) {
			p.finish(j, true)
			return
		}
		select {
		case p.claimCh <- j:
		case <-j.wait.Done():
			p.finish(j, true)
		}
	})
}

// close waits for every stage to finish; call it after the session's
// context ended and no more offers come.
func (p *pipeline) close() {
	p.feeder.Wait()
	p.backlogMu.Lock()
	for _, t := range p.backlog {
		p.a.unmarkInflight(t.ID)
	}
	p.backlog = nil
	p.backlogMu.Unlock()
	p.waiters.Wait()
	close(p.claimCh)
	p.claimers.Wait()
	close(p.execCh)
	close(p.ctlCh)
	p.executors.Wait()
	p.fetchers.Wait()
	if p.drainCancel != nil {
		p.drainCancel()
	}
}

// finish takes j out of the pipeline; lost counts it as a claim lost.
func (p *pipeline) finish(j *job, lost bool) {
	if lost {
		p.a.metrics.claimsLost.Inc()
	}
	j.abandon()
	p.a.unmarkInflight(j.t.ID)
}

// claimers is how many claim loops a pipeline runs for maxParallel
// executors: one per 8, since each sends up to registry.MaxClaimBatch
// claims per round trip. Fewer round trips in flight leave more tickets
// waiting together, so a burst goes in fuller batches.
func claimers(maxParallel int) int { return (maxParallel + 7) / 8 }

// claimLoop sends claims until claimCh is closed. It takes the jobs that
// are waiting in claimCh along with the one it received, up to
// registry.MaxClaimBatch, and claims them in one round trip: a burst of
// tickets reaches etcd in a few transactions instead of one each, while a
// lone ticket is sent at once, without waiting for company.
func (p *pipeline) claimLoop() {
	for j := range p.claimCh {
		batch := []*job{j}
	gather:
		for len(batch) < registry.MaxClaimBatch {
			select {
			case j, ok := <-p.claimCh:
				if !ok {
					break gather
				}
				batch = append(batch, j)
			default:
				break gather
			}
		}
		p.claim(batch)
	}
}

// claim claims the tickets of batch that are still wanted, in one round
// trip, and passes the won ones to the executors.
func (p *pipeline) claim(batch []*job) {
	a := p.a
	var (
		jobs    []*job
		tickets []registry.Ticket
	)
	for _, j := range batch {
		a.claiming(j.t.ID)
		if j.wait.Err() != nil {
			p.finish(j, true)
			continue
		}
		if j.t.Op == registry.TicketStart {
			if ok, why := a.reserve(j.t.Instance, a.reservationOf(j.t)); !ok {
				a.log.Debug("host full; leaving the ticket to others", "ticket", j.t.ID, "why", why)
				p.finish(j, true)
				a.skip(j.t) // for when room frees up here
				continue
			}
		}
		jobs = append(jobs, j)
		tickets = append(tickets, j.t)
	}
	if len(jobs) == 0 {
		return
	}
	a.claimsInFlight.Add(int64(len(jobs)))
	defer a.claimsInFlight.Add(-int64(len(jobs)))
	for try := 0; ; try++ {
		sent := time.Now()
		results := p.s.ClaimBatch(p.ctx, tickets)
		a.noteClaimLatency(time.Since(sent))
		a.metrics.claimBatches.Inc()
		var again []*job
		for i, j := range jobs {
			if err := results[i].Err; unknownOutcome(err) && p.ctx.Err() == nil {
				a.log.Debug("claim outcome unknown; trying again", "ticket", j.t.ID, "error", err)
				again = append(again, j)
				continue
			}
			p.claimed(j, results[i])
		}
		if len(again) == 0 {
			return
		}
		// A claim whose reply was lost may have gone through: the retry
		// finds it held by this session and takes it (registry Claim).
		timer := time.NewTimer(min(claimRetryDelay<<min(try, 8), maxClaimRetryDelay))
		select {
		case <-timer.C:
		case <-p.ctx.Done():
			timer.Stop()
		}
		jobs, tickets = again, tickets[:0]
		for _, j := range jobs {
			tickets = append(tickets, j.t)
		}
	}
}

// A claim that failed for want of an answer (etcd unreachable, a
// timeout) is sent again until it has one or the session ends (a claim
// that went through and was given up would hold its ticket, unserved, as
// long as the lease lives): claimRetryDelay after the first failure,
// twice as long after each next one, at most maxClaimRetryDelay.
const (
	claimRetryDelay    = 200 * time.Millisecond
	maxClaimRetryDelay = 5 * time.Second
)

// unknownOutcome reports a claim error that says nothing of the claim:
// not one of the registry's verdicts (lost, invalid, lease gone).
func unknownOutcome(err error) bool {
	if err == nil {
		return false
	}
	for _, verdict := range []error{registry.ErrClaimed, registry.ErrTicketChanged, registry.ErrTicketDone,
		registry.ErrNotFound, registry.ErrNotHolder, registry.ErrInvalid, registry.ErrLeaseLost, registry.ErrCorrupt} {
		if errors.Is(err, verdict) {
			return false
		}
	}
	return true
}

// claimed settles job j's claim outcome: a won ticket goes to the
// executors; a lost or failed one leaves the pipeline.
func (p *pipeline) claimed(j *job, res registry.ClaimResult) {
	a := p.a
	inst, err := res.Instance, res.Err
	if err != nil && j.t.Op == registry.TicketStart {
		a.unreserve(j.t.Instance)
	}
	switch {
	case errors.Is(err, registry.ErrClaimed), errors.Is(err, registry.ErrTicketChanged),
		errors.Is(err, registry.ErrTicketDone), errors.Is(err, registry.ErrNotFound):
		a.metrics.claimConflicts.Inc()
		a.log.Debug("ticket taken by another host", "ticket", j.t.ID, "error", err)
		p.finish(j, true)
		return
	case err != nil:
		if p.ctx.Err() == nil {
			a.log.Warn("claim ticket", "ticket", j.t.ID, "error", err)
		}
		p.finish(j, false)
		return
	}
	a.metrics.claimsWon.Inc()
	j.inst = inst
	// Executors drain execCh and ctlCh until they are closed.
	if j.t.Op == registry.TicketStart {
		p.execCh <- j
	} else {
		p.ctlCh <- j
	}
}

// execLoop runs the claimed tickets of ch; starts wait for the host's
// start rate first. A start whose artifact is not in the cache yet is
// handed to a goroutine of its own (fetchers) that waits for the fetch
// and then starts the instance: a slow or hung artifact server holds no
// executor, so the other tickets (other apps' starts, stops) keep going.
// How many such starts wait is bounded by the claims this host takes (and
// its capacity); the fetches themselves by Config.ArtifactFetchParallel
// and each by Config.ArtifactTimeout.
func (p *pipeline) execLoop(ch chan *job) {
	for j := range ch {
		if j.t.Op == registry.TicketStart && p.ctx.Err() == nil {
			_ = p.a.startLimit.Wait(p.ctx) // fails only when the session ends, checked next
		}
		if p.ctx.Err() != nil {
			// Shutting down (or the lease is gone) before it started.
			_ = p.s.Unclaim(p.drain(), j.t, "agent shutting down before the ticket was started")
			p.done(j)
			continue
		}
		if j.t.Op == registry.TicketStart && p.a.prepareStart(p.ctx, j) {
			p.fetchers.Go(func() { p.run(j) })
			continue
		}
		p.run(j)
	}
}

// run executes job j and takes it out of the pipeline.
func (p *pipeline) run(j *job) {
	p.a.execute(p.ctx, p.drain, p.s, j)
	p.done(j)
}

func (p *pipeline) done(j *job) {
	if j.t.Op == registry.TicketStart {
		p.a.settleReservation(j.t.Instance)
	}
	p.finish(j, false)
}

// drain returns the context releases at shutdown use: one deadline for
// all of them, drainTimeout from the first, so that shutdown stays quick
// even with many claimed tickets and etcd unreachable.
func (p *pipeline) drain() context.Context {
	p.drainOnce.Do(func() {
		p.drainCtx, p.drainCancel = context.WithTimeout(context.WithoutCancel(p.ctx), drainTimeout)
	})
	return p.drainCtx
}

// waitClaimDelay waits out j's claim delay: its rank among the hosts for
// the ticket times the backup step, re-checked when the timer fires (the
// rank or the step may have changed); a backup claim is put off while this
// agent's own claims are in flight. False if the wait ended first.
func (a *Agent) waitClaimDelay(j *job) bool {
	seen := time.Now()
	d, backup := a.claimDelay(j.t)
	wasBackup := backup
	a.log.Debug("ticket offered", "ticket", j.t.ID, "op", string(j.t.Op), "delay", d, "backup", backup)
	for postponed := 0; d > 0; {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-j.wait.Done():
			timer.Stop()
			return false
		}
		d, backup = a.claimDelay(j.t)
		d -= time.Since(seen)
		// A host that ranked first when the ticket came may still be
		// claiming it even if the ranks moved since (a status update
		// changed a weight): a backup stays one.
		if d <= 0 && (backup || wasBackup) && postponed < maxBackupPostpone && a.claimsInFlight.Load() > 0 {
			d = a.backupStep() / 2
			postponed++
		}
	}
	return j.wait.Err() == nil
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
	log.Warn("ticket failed; releasing it", "error", err)
	if rerr := s.Release(ctx, t, err.Error()); rerr != nil {
		log.Warn("release ticket", "error", rerr)
	}
}

// A start under way on this host, until its process is handed to the
// supervisor: a stop of its instance or the deletion of its ticket
// cancels it (see cancelStart).
type startRun struct {
	ticket string
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// errStartCancelled is the cause a cancelled start reports.
var errStartCancelled = errors.New("start cancelled")

// runStart runs start ticket j, cancellable through cancelStart; cancelled
// reports that it ended because of that.
func (a *Agent) runStart(ctx context.Context, s *registry.HostSession, j *job) (cancelled bool, err error) {
	id := j.inst.ID
	if id == "" {
		id = j.t.Instance
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	run := &startRun{ticket: j.t.ID, cancel: cancel, done: make(chan struct{})}
	a.mu.Lock()
	a.starts[id] = run
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		if a.starts[id] == run {
			delete(a.starts, id)
		}
		a.mu.Unlock()
		close(run.done)
	}()
	err = a.start(sctx, s, j)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(sctx), errStartCancelled) {
		return true, context.Cause(sctx)
	}
	return false, err
}

// cancelStart cancels the start of instance id under way here, if any,
// and waits (bounded by ctx) until it has ended, so that whatever comes
// next sees either no process or one the supervisor has.
func (a *Agent) cancelStart(ctx context.Context, id string, why string) {
	a.mu.Lock()
	run := a.starts[id]
	a.mu.Unlock()
	if run == nil {
		return
	}
	run.cancel(fmt.Errorf("%w: %s", errStartCancelled, why))
	select {
	case <-run.done:
	case <-ctx.Done():
	}
}

// cancelStartTicket cancels the start under way for ticket id (deleted:
// completed, or cancelled by a scale-down or an app's removal) without
// waiting for it. A start that already handed its process to the
// supervisor is not affected.
func (a *Agent) cancelStartTicket(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, run := range a.starts {
		if run.ticket == id {
			run.cancel(fmt.Errorf("%w: its ticket was deleted", errStartCancelled))
		}
	}
}

// prepareStart reads start job j's launch (revision, proc type, env) and
// the group its release goes to, and reports whether the start must wait
// for an artifact that is not in the cache yet.
func (a *Agent) prepareStart(ctx context.Context, j *job) bool {
	l, err := a.reg.Launch(ctx, j.t.App, j.t.Rev, j.t.Proc)
	// Env vars that do not check out (a key with "=" would set another
	// variable) are left out and reported, not passed to the process.
	bad, err := registry.Skipped(err)
	if err != nil {
		j.launchErr = err
		return false
	}
	a.metrics.badRecords.observe("launch/"+j.t.App, bad)
	j.launch = &l
	rev := l.Revision
	if rev.ArtifactURL == "" {
		return false
	}
	if j.gid, err = releaseGroup(l.ProcType.User, l.ProcType.Group); err != nil {
		j.launchErr = err
		return false
	}
	return !a.artifacts.ready(rev.SHA256, j.gid)
}

// start runs a start ticket: resolve the revision and proc type, fetch the
// artifact, pick a port and start the process. The ticket completes when
// the instance first reaches running (or a terminal state), written by the
// state writer in the same transaction as that state.
func (a *Agent) start(ctx context.Context, s *registry.HostSession, j *job) error {
	t, inst := j.t, j.inst
	if inst.ID == "" {
		inst.ID = t.Instance
	}
	if j.launch == nil && j.launchErr == nil {
		a.prepareStart(ctx, j)
	}
	if j.launchErr != nil {
		return j.launchErr
	}
	spec, port, release, err := a.buildSpec(ctx, t, inst, *j.launch, j.gid)
	if err != nil {
		return err
	}
	// Once the supervisor has the instance, its release counts as in use
	// by it (metaDir); until then the pin keeps pruning away.
	defer release()
	a.writer.expect(inst.ID, t)
	if _, err := a.sup.Start(ctx, spec); err != nil {
		a.writer.unexpect(inst.ID)
		a.ports.Free(port, inst.ID)
		if errors.Is(err, supervisor.ErrExists) {
			// Already running here (a re-delivered ticket): done.
			return s.Complete(ctx, t)
		}
		if errors.Is(err, supervisor.ErrRoot) {
			return fmt.Errorf("start: %w (this host refuses instances running as root: give the proc type a user, `visor proc set --user`, or start the agent with -allow-root-instances)", err)
		}
		return fmt.Errorf("start: %w", err)
	}
	return nil
}

// buildSpec turns a start ticket into a supervisor.Spec.
func (a *Agent) buildSpec(ctx context.Context, t registry.Ticket, inst registry.Instance, l registry.Launch, gid int) (supervisor.Spec, int, func(), error) {
	rev, proc, appEnv := l.Revision, l.ProcType, l.Env
	dir := rev.Dir
	release := func() {}
	if rev.ArtifactURL != "" {
		var err error
		dir, release, err = a.artifacts.Dir(ctx, rev.ArtifactURL, rev.SHA256, gid)
		if err != nil {
			return supervisor.Spec{}, 0, nil, err
		}
	} else if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return supervisor.Spec{}, 0, nil, fmt.Errorf("%w: revision directory %q is not on this host", ErrArtifact, dir)
	}
	spec, port, err := a.specIn(t, inst, proc, appEnv, dir)
	if err != nil {
		release()
		return supervisor.Spec{}, 0, nil, err
	}
	return spec, port, release, nil
}

// specIn builds the Spec of a start ticket whose working directory is dir.
func (a *Agent) specIn(t registry.Ticket, inst registry.Instance, proc registry.ProcType, appEnv map[string]string, dir string) (supervisor.Spec, int, error) {
	var err error
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
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	envList := make([]string, 0, len(keys))
	for _, k := range keys {
		envList = append(envList, k+"="+env[k])
	}

	// The supervisor parses the line (package supervisor/shellline): a
	// simple command runs directly, a missing program is refused with its
	// name, anything else runs under /bin/sh -c.
	spec := supervisor.Spec{
		ID:          inst.ID,
		Shell:       command,
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
			metaDir:     dir,
		},
	}
	a.reservationOf(t).meta(spec.Meta)
	if h := proc.Health; h != nil {
		hc := &supervisor.HealthCheck{
			Type:             supervisor.CheckType(h.Type), // same names: TestCheckTypesMatch
			Command:          h.Command,
			Period:           time.Duration(h.Period),
			Timeout:          time.Duration(h.Timeout),
			FailureThreshold: h.FailureThreshold,
		}
		switch hc.Type {
		case supervisor.CheckTCP:
			hc.Address = "127.0.0.1:" + strconv.Itoa(port)
		case supervisor.CheckHTTP:
			hc.URL = "http://127.0.0.1:" + strconv.Itoa(port) + h.Path
		}
		spec.Health = hc
	}
	return spec, port, nil
}

// stop runs a stop ticket: the instance stops for good and the ticket
// completes; its final state reaches the registry through the writer.
func (a *Agent) stop(ctx context.Context, s *registry.HostSession, t registry.Ticket) error {
	// A start still fetching its artifact (or about to start the process)
	// ends first: then the instance either never ran, or is the
	// supervisor's to stop.
	a.cancelStart(ctx, t.Instance, "its stop was requested")
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
		if p, perr := strconv.Atoi(st.Meta[metaPort]); perr == nil {
			a.ports.Free(p, st.ID)
		}
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
