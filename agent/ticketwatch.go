package agent

import (
	"context"
	"sync"

	"github.com/visorhq/visor/registry"
)

// serve runs the ticket loop and the host status loop on session s until ctx
// ends or the session's lease is lost.
func (a *Agent) serve(ctx context.Context, s *registry.HostSession) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-s.Done():
			cancel()
		case <-sctx.Done():
		}
	}()
	go func() {
		defer wg.Done()
		a.statusLoop(sctx, s)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for d := range a.reg.WatchDrain(sctx, a.cfg.HostID) {
			if a.draining.Swap(d) != d {
				a.log.Info("host drain changed", "draining", d)
			}
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchPeers(sctx)
	}()
	if !a.cfg.DisableReconciler {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.lead(sctx, int64(s.Lease()))
		}()
	}

	p := newPipeline(sctx, a.pipelineDeps(s))
	a.adm.forgetSkipped()
	tickets := a.reg.WatchTickets(sctx, a.cfg.HostID)
	for watching := true; watching; {
		select {
		case ev, ok := <-tickets:
			if !ok {
				watching = false
				break
			}
			if ev.Err != nil {
				a.log.Warn("ticket watch", "error", ev.Err)
				continue
			}
			if ev.Deleted || ev.Claimed {
				a.adm.unskip(ev.Ticket.ID)
				if ev.Ticket.Holder != a.cfg.HostID {
					a.inflight.abandon(ev.Ticket.ID)
				}
				if ev.Deleted {
					// A start still waiting for its artifact has no ticket
					// left to complete: stop waiting.
					a.starts.cancelTicket(ev.Ticket.ID)
				}
				continue
			}
			if !a.eligible(ev.Ticket) {
				continue
			}
			if ev.Ticket.Op == registry.TicketStart && !a.adm.fits(a.adm.reservationOf(ev.Ticket)) {
				a.adm.skip(ev.Ticket)
				continue
			}
			if a.inflight.mark(ev.Ticket.ID) {
				p.offer(ev.Ticket)
			}
		case <-a.adm.room():
			for _, t := range a.adm.takeFitting(a.cfg.HostID, a.draining.Load) {
				if a.inflight.mark(t.ID) {
					p.offer(t)
				}
			}
		}
	}
	p.close()
	select {
	case <-s.Done():
		return registry.ErrLeaseLost
	default:
		return nil
	}
}

// eligible reports whether this host may claim t: targeted here or
// untargeted, not among the hosts that already failed it, and for starts
// not draining. Whether a start fits is asked apart (fits): a ticket
// that does not fit yet is kept for when room frees up.
func (a *Agent) eligible(t registry.Ticket) bool {
	if t.Holder != "" {
		return false
	}
	if t.Host != "" && t.Host != a.cfg.HostID {
		return false
	}
	if t.Excludes(a.cfg.HostID) {
		return false
	}
	if t.Op == registry.TicketStart && a.draining.Load() {
		return false
	}
	return true
}
