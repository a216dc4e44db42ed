package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/backoff"
)

// TicketEvent is one change seen by WatchTickets.
type TicketEvent struct {
	// Ticket is the ticket as stored, with the ModRevision to pass to
	// Claim; for Deleted only its ID is set.
	Ticket Ticket
	// Deleted reports that the ticket was completed or cancelled.
	Deleted bool
	// Claimed reports that a host claimed the ticket; only Ticket.ID and
	// Ticket.Holder are set. Hosts waiting to claim it can stop waiting.
	Claimed bool
	// Err reports a value that did not decode (the watch goes on) or a
	// watch error before a re-list.
	Err error
	// Revision is the etcd revision of the change or listing.
	Revision int64
}

// WatchTickets streams the unclaimed tickets host may claim (untargeted or
// targeted at host): first a listing, then changes from the listing's
// revision + 1, so nothing falls in between. Claims of any ticket are sent
// as Claimed events (not claimable), so claimers waiting out a delay can
// give up early. A ticket whose claim vanishes
// (released or its holder's lease lost) is sent again. After a compaction
// or a watch error it re-lists. Values that do not decode are reported once
// through Err and skipped. Tickets that failed on host are still sent
// (their FailedHosts say so); the caller decides. A goroutine owned by ctx
// runs the watch; it closes the channel after ctx ends, so callers cancel
// ctx and then drain.
func (r *Registry) WatchTickets(ctx context.Context, host string) <-chan TicketEvent {
	ch := make(chan TicketEvent, 64)
	go func() {
		defer close(ch)
		w := ticketWatch{r: r, host: host, ch: ch, reported: map[string]bool{}}
		w.run(ctx)
	}()
	return ch
}

type ticketWatch struct {
	r        *Registry
	host     string
	ch       chan<- TicketEvent
	reported map[string]bool // key@modrev of bad values already reported
	// tickets holds the eligible tickets as last seen (claimed or not),
	// so that a vanished claim can be judged without a read.
	tickets map[string]Ticket
	// vanished holds claims deleted at a revision when the ticket's own
	// event for that revision has not been seen yet: a completion (the
	// ticket goes in the same transaction) or a lease that ended (the
	// ticket stays). The ticket stream settles it: a deletion, or a
	// progress notification past the revision (requested at once).
	vanished map[string]int64
}

func (w *ticketWatch) send(ctx context.Context, ev TicketEvent) bool {
	select {
	case w.ch <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *ticketWatch) bad(ctx context.Context, kv *mvccpb.KeyValue, err error) bool {
	id := fmt.Sprintf("%s@%d", kv.Key, kv.ModRevision)
	if w.reported[id] {
		return true
	}
	w.reported[id] = true
	return w.send(ctx, TicketEvent{Err: err, Revision: kv.ModRevision})
}

func (w *ticketWatch) eligible(t Ticket) bool { return t.Host == "" || t.Host == w.host }

func (w *ticketWatch) run(ctx context.Context) {
	r := w.r
	pause := backoff.New(rewatchBackoff)
	for first := true; ctx.Err() == nil; first = false {
		if !first && pause.Wait(ctx) != nil {
			return
		}
		resp, err := r.cli.Txn(ctx).Then(
			clientv3.OpGet(r.ticketsDir(), clientv3.WithPrefix()),
			clientv3.OpGet(r.claimsDir(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			if ctx.Err() == nil && !w.send(ctx, TicketEvent{Err: errorf("registry: list tickets: %w", err)}) {
				return
			}
			continue
		}
		rev := resp.Header.Revision
		w.tickets, w.vanished = map[string]Ticket{}, map[string]int64{}
		claimed := map[string]bool{}
		for _, kv := range rangeKvs(resp, 1) {
			claimed[strings.TrimPrefix(string(kv.Key), r.claimsDir())] = true
		}
		for _, kv := range rangeKvs(resp, 0) {
			t, err := decodeTicket(kv, strings.TrimPrefix(string(kv.Key), r.ticketsDir()))
			if err != nil {
				if !w.bad(ctx, kv, err) {
					return
				}
				continue
			}
			if !w.eligible(t) {
				continue
			}
			w.tickets[t.ID] = t
			if claimed[t.ID] {
				continue
			}
			if !w.send(ctx, TicketEvent{Ticket: t, Revision: rev}) {
				return
			}
		}
		if w.watch(ctx, rev+1) {
			pause.Reset()
		}
	}
}

// watch follows tickets and claims from rev until an error that needs a
// re-list (reported through the channel) or ctx ends. It reports whether
// it saw any response, to reset the caller's backoff.
func (w *ticketWatch) watch(ctx context.Context, rev int64) bool {
	r := w.r
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	tw := r.cli.Watch(wctx, r.ticketsDir(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	cw := r.cli.Watch(wctx, r.claimsDir(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	seen := false
	for {
		var resp clientv3.WatchResponse
		var ok, claims bool
		select {
		case resp, ok = <-tw:
		case resp, ok = <-cw:
			claims = true
		case <-ctx.Done():
			return seen // see etcdwatch.Responses
		}
		if !ok {
			return seen
		}
		if err := resp.Err(); err != nil {
			if ctx.Err() == nil && !errors.Is(err, rpctypes.ErrCompacted) {
				w.send(ctx, TicketEvent{Err: errorf("registry: watch tickets: %w", err)})
			}
			return seen
		}
		seen = true
		waiting := len(w.vanished)
		for _, ev := range resp.Events {
			if !w.handle(ctx, ev, claims) {
				return seen
			}
		}
		if !claims && resp.IsProgressNotify() && !w.settle(ctx, resp.Header.Revision) {
			return seen
		}
		if len(w.vanished) > waiting {
			// Ask for a progress notification: once the ticket stream is
			// past the claims' revisions, their tickets are settled.
			if err := r.cli.RequestProgress(wctx); err != nil {
				// List again instead: the listing offers what is free.
				r.log.Debug("request watch progress; listing tickets again", "error", err)
				return seen
			}
		}
	}
}

// settle re-offers the tickets whose claims vanished at or before rev and
// that were not deleted with them: their holder's lease ended.
func (w *ticketWatch) settle(ctx context.Context, rev int64) bool {
	for id, at := range w.vanished {
		if at > rev {
			continue
		}
		delete(w.vanished, id)
		if t, ok := w.tickets[id]; ok {
			if !w.send(ctx, TicketEvent{Ticket: t, Revision: rev}) {
				return false
			}
		}
	}
	return true
}

func (w *ticketWatch) handle(ctx context.Context, ev *clientv3.Event, claims bool) bool {
	r := w.r
	kv := ev.Kv
	if claims {
		id := strings.TrimPrefix(string(kv.Key), r.claimsDir())
		if ev.Type == clientv3.EventTypePut {
			// Claimed: nothing to offer, but waiting claimers may stop.
			delete(w.vanished, id)
			return w.send(ctx, TicketEvent{Ticket: Ticket{ID: id, Holder: string(kv.Value)}, Claimed: true, Revision: kv.ModRevision})
		}
		// The claim vanished. If the ticket is gone (completed) or not
		// ours, there is nothing to offer; if it was rewritten in the same
		// transaction (a release), its own event offers it. Otherwise wait
		// for the ticket stream to say whether it went in that transaction.
		t, ok := w.tickets[id]
		if !ok || t.ModRevision >= kv.ModRevision {
			return true
		}
		w.vanished[id] = kv.ModRevision
		return true
	}
	id := strings.TrimPrefix(string(kv.Key), r.ticketsDir())
	if ev.Type == clientv3.EventTypeDelete {
		delete(w.tickets, id)
		delete(w.vanished, id)
		return w.send(ctx, TicketEvent{Ticket: Ticket{ID: id}, Deleted: true, Revision: kv.ModRevision})
	}
	t, err := decodeTicket(kv, id)
	if err != nil {
		return w.bad(ctx, kv, err)
	}
	if !w.eligible(t) {
		delete(w.tickets, id)
		return true
	}
	w.tickets[id] = t
	delete(w.vanished, id)
	return w.send(ctx, TicketEvent{Ticket: t, Revision: kv.ModRevision})
}
