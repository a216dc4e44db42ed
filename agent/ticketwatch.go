package agent

import (
	"context"
	"sync"

	"github.com/visorhq/visor/registry"
)

// serve runs, on session s, until ctx ends or the session's lease is
// lost: the session's helpers (host status, drain flag, peers, and the
// reconciler's campaign unless disabled) and the ticket watch feeding the
// pipeline. It returns registry.ErrLeaseLost when the lease ended, and
// only after every goroutine it started has exited.
func (a *Agent) serve(ctx context.Context, s *registry.HostSession) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		select {
		case <-s.Done():
			cancel()
		case <-sctx.Done():
		}
	})
	wg.Go(func() { a.status.run(sctx, s) })
	wg.Go(func() { a.watchDrain(sctx) })
	wg.Go(func() { a.watchPeers(sctx) })
	if !a.cfg.DisableReconciler {
		wg.Go(func() { a.lead(sctx, int64(s.Lease())) })
	}

	p := newPipeline(sctx, a.pipelineDeps(s))
	a.adm.forgetSkipped()
	a.watchTickets(sctx, p)
	p.close()
	select {
	case <-s.Done():
		return registry.ErrLeaseLost
	default:
		return nil
	}
}

// watchDrain keeps a.draining as the registry says until ctx ends.
func (a *Agent) watchDrain(ctx context.Context) {
	for d := range a.reg.WatchDrain(ctx, a.cfg.HostID) {
		if a.draining.Swap(d) != d {
			a.log.Info("host drain changed", "draining", d)
		}
	}
}

// watchTickets offers the tickets this host may claim to pipeline p until
// ctx ends: those the watch delivers, and those passed over for want of
// room once room frees up (admission). Another host's claim, or the
// ticket's deletion, abandons its wait here; a deleted ticket's start
// still fetching its artifact is cancelled.
func (a *Agent) watchTickets(ctx context.Context, p *pipeline) {
	tickets := a.reg.WatchTickets(ctx, a.cfg.HostID)
	for {
		select {
		case ev, ok := <-tickets:
			if !ok {
				return
			}
			a.ticketEvent(ev, p)
		case <-a.adm.room():
			for _, t := range a.adm.takeFitting(a.cfg.HostID, a.draining.Load) {
				if a.inflight.mark(t.ID) {
					p.offer(t)
				}
			}
		}
	}
}

// ticketEvent handles one event of the ticket watch (see watchTickets).
func (a *Agent) ticketEvent(ev registry.TicketEvent, p *pipeline) {
	switch {
	case ev.Err != nil:
		a.log.Warn("ticket watch", "error", ev.Err)
	case ev.Deleted || ev.Claimed:
		a.adm.unskip(ev.Ticket.ID)
		if ev.Ticket.Holder != a.cfg.HostID {
			a.inflight.abandon(ev.Ticket.ID)
		}
		if ev.Deleted {
			// A start still waiting for its artifact has no ticket left
			// to complete: stop waiting.
			a.starts.cancelTicket(ev.Ticket.ID)
		}
	case !eligible(ev.Ticket, a.cfg.HostID, a.draining.Load()):
	case ev.Ticket.Op == registry.TicketStart && !a.adm.fits(a.adm.reservationOf(ev.Ticket)):
		a.adm.skip(ev.Ticket)
	case a.inflight.mark(ev.Ticket.ID):
		p.offer(ev.Ticket)
	}
}

// eligible reports whether host, draining or not, may claim t: unclaimed,
// targeted at host or untargeted, host not among the hosts that already
// failed it, and for starts host not draining. Whether a start fits is
// asked apart (fits): a ticket that does not fit yet is kept for when room
// frees up.
func eligible(t registry.Ticket, host string, draining bool) bool {
	if t.Holder != "" {
		return false
	}
	if t.Host != "" && t.Host != host {
		return false
	}
	if t.Excludes(host) {
		return false
	}
	if t.Op == registry.TicketStart && draining {
		return false
	}
	return true
}
