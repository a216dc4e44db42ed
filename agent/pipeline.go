package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/registry"
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
	pipelineDeps
	ctx             context.Context // the session
	slot            chan struct{}   // bounds start tickets waiting out their delay
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

	// For a start, set by starter.prepare: the launch read, or why it failed,
	// and the group the release is handed to (-1: root's own release).
	launch    *registry.Launch
	launchErr error
	gid       int
}

// pipelineSession is what the pipeline needs of the host session
// (*registry.HostSession).
type pipelineSession interface {
	ClaimBatch(ctx context.Context, ts []registry.Ticket) []registry.ClaimResult
	Unclaim(ctx context.Context, t registry.Ticket, reason string) error
}

// ticketExecutor runs the tickets the pipeline claimed (execute.go).
type ticketExecutor interface {
	// prepare reads what start job j needs before it runs, and reports
	// whether it must wait for an artifact first (then it waits off the
	// executors).
	prepare(ctx context.Context, j *job) (fetch bool)
	// execute runs claimed job j and completes or releases its ticket;
	// drain gives the context of a release once ctx has ended.
	execute(ctx context.Context, drain func() context.Context, j *job)
}

// claimCounters are the pipeline's metrics.
type claimCounters struct {
	won, lost, conflicts, batches prometheus.Counter
}

// pipelineDeps is what the pipeline needs of the rest of the agent.
type pipelineDeps struct {
	log         hclog.Logger
	maxParallel int // Config.MaxParallel
	session     pipelineSession
	exec        ticketExecutor
	inflight    *inflightTickets
	adm         *admission
	// supervised reports whether the supervisor has instance id (see
	// admission.settle).
	supervised func(id string) bool
	startLimit *rate.Limiter // Config.StartRate
	place      *placer
	counters   claimCounters
}

// newPipeline starts a pipeline for one session, which ends with ctx;
// call close after ctx ended.
func newPipeline(ctx context.Context, d pipelineDeps) *pipeline {
	n := d.maxParallel
	p := &pipeline{pipelineDeps: d, ctx: ctx, slot: make(chan struct{}, 16*n),
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
			p.inflight.unmark(t.ID)
			return // close lets go of the rest
		}
	}
}

// wait runs ticket t's claim delay in a waiter goroutine and hands it to
// the claimers; slotted says it holds a slot to give back.
func (p *pipeline) wait(t registry.Ticket, slotted bool) {
	wait, abandon := context.WithCancel(p.ctx)
	p.inflight.setAbandon(t.ID, abandon)
	j := &job{t: t, wait: wait, abandon: abandon}
	p.waiters.Go(func() {
		if slotted {
			defer func() { <-p.slot }()
		}
		if !p.place.waitClaimDelay(j) {
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
		p.inflight.unmark(t.ID)
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
		p.counters.lost.Inc()
	}
	j.abandon()
	p.inflight.unmark(j.t.ID)
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
	var (
		jobs    []*job
		tickets []registry.Ticket
	)
	for _, j := range batch {
		p.inflight.claiming(j.t.ID)
		if j.wait.Err() != nil {
			p.finish(j, true)
			continue
		}
		if j.t.Op == registry.TicketStart {
			if ok, why := p.adm.reserve(j.t.Instance, p.adm.reservationOf(j.t)); !ok {
				p.log.Debug("host full; leaving the ticket to others", "ticket", j.t.ID, "why", why)
				p.finish(j, true)
				p.adm.skip(j.t) // for when room frees up here
				continue
			}
		}
		jobs = append(jobs, j)
		tickets = append(tickets, j.t)
	}
	if len(jobs) == 0 {
		return
	}
	p.place.claimsInFlight.Add(int64(len(jobs)))
	defer p.place.claimsInFlight.Add(-int64(len(jobs)))
	for try := 0; ; try++ {
		sent := time.Now()
		results := p.session.ClaimBatch(p.ctx, tickets)
		p.place.noteClaimLatency(time.Since(sent))
		p.counters.batches.Inc()
		var again []*job
		for i, j := range jobs {
			if err := results[i].Err; unknownOutcome(err) && p.ctx.Err() == nil {
				p.log.Debug("claim outcome unknown; trying again", "ticket", j.t.ID, "error", err)
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
		_ = backoff.Sleep(p.ctx, claimRetry.Delay(try+1)) // a session that ended is seen next round
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

var claimRetry = backoff.Policy{Initial: claimRetryDelay, Max: maxClaimRetryDelay}

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
	inst, err := res.Instance, res.Err
	if err != nil && j.t.Op == registry.TicketStart {
		p.adm.unreserve(j.t.Instance)
	}
	switch {
	case errors.Is(err, registry.ErrClaimed), errors.Is(err, registry.ErrTicketChanged),
		errors.Is(err, registry.ErrTicketDone), errors.Is(err, registry.ErrNotFound):
		p.counters.conflicts.Inc()
		p.log.Debug("ticket taken by another host", "ticket", j.t.ID, "error", err)
		p.finish(j, true)
		return
	case err != nil:
		if p.ctx.Err() == nil {
			p.log.Warn("claim ticket", "ticket", j.t.ID, "error", err)
		}
		p.finish(j, false)
		return
	}
	p.counters.won.Inc()
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
			_ = p.startLimit.Wait(p.ctx) // fails only when the session ends, checked next
		}
		if p.ctx.Err() != nil {
			// Shutting down (or the lease is gone) before it started.
			_ = p.session.Unclaim(p.drain(), j.t, "agent shutting down before the ticket was started")
			p.done(j)
			continue
		}
		if j.t.Op == registry.TicketStart && p.exec.prepare(p.ctx, j) {
			p.fetchers.Go(func() { p.run(j) })
			continue
		}
		p.run(j)
	}
}

// run executes job j and takes it out of the pipeline.
func (p *pipeline) run(j *job) {
	p.exec.execute(p.ctx, p.drain, j)
	p.done(j)
}

func (p *pipeline) done(j *job) {
	if j.t.Op == registry.TicketStart {
		p.adm.settle(j.t.Instance, p.supervised(j.t.Instance))
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

// inflightTickets is the set of tickets in the pipeline (from offer to
// finish), so that a ticket seen again meanwhile (re-delivered by the
// watch, offered again when room frees up) is not offered twice, with the
// cancel of those still waiting out their claim delay.
type inflightTickets struct {
	mu      sync.Mutex // guards the maps
	ids     map[string]struct{}
	waiting map[string]context.CancelFunc // tickets waiting out the claim delay
}

func newInflightTickets() *inflightTickets {
	return &inflightTickets{ids: make(map[string]struct{}), waiting: make(map[string]context.CancelFunc)}
}

// mark adds ticket id; false if it is in the pipeline already.
func (f *inflightTickets) mark(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ids[id]; ok {
		return false
	}
	f.ids[id] = struct{}{}
	return true
}

// unmark takes ticket id out.
func (f *inflightTickets) unmark(id string) {
	f.mu.Lock()
	delete(f.ids, id)
	delete(f.waiting, id)
	f.mu.Unlock()
}

// setAbandon records how to abandon the wait before claiming ticket id.
func (f *inflightTickets) setAbandon(id string, cancel context.CancelFunc) {
	f.mu.Lock()
	f.waiting[id] = cancel
	f.mu.Unlock()
}

// claiming marks that ticket id's claim is being sent: from now on it is
// no longer abandoned when someone else's claim shows up.
func (f *inflightTickets) claiming(id string) {
	f.mu.Lock()
	delete(f.waiting, id)
	f.mu.Unlock()
}

// abandon stops waiting to claim ticket id (another host claimed it, or it
// is gone), saving a claim transaction that would fail.
func (f *inflightTickets) abandon(id string) {
	f.mu.Lock()
	cancel := f.waiting[id]
	delete(f.waiting, id)
	f.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
