package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/internal/etcdwatch"
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
			if ctx.Err() == nil && !w.send(ctx, TicketEvent{Err: fmt.Errorf("registry: list tickets: %w", err)}) {
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
				w.send(ctx, TicketEvent{Err: fmt.Errorf("registry: watch tickets: %w", err)})
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

// EventType names what an Event is about.
type EventType string

// Event types.
const (
	AppChanged      EventType = "app_changed"
	AppDeleted      EventType = "app_deleted"
	RevChanged      EventType = "rev_changed"
	ProcChanged     EventType = "proc_changed"
	EnvChanged      EventType = "env_changed"
	ScaleChanged    EventType = "scale_changed"
	TicketCreated   EventType = "ticket_created"
	TicketClaimed   EventType = "ticket_claimed"
	TicketReleased  EventType = "ticket_released"
	TicketDone      EventType = "ticket_done"
	InstanceChanged EventType = "instance_changed"
	InstanceDeleted EventType = "instance_deleted"
	HostJoined      EventType = "host_joined"
	HostLeft        EventType = "host_left"
	HostChanged     EventType = "host_changed"
	HostDrained     EventType = "host_drained"
	HostUndrained   EventType = "host_undrained"
	// ScaleWaiting reports a change of a scale's waiting status (see
	// ScaleStatus); Deleted when nothing waits any more.
	ScaleWaiting EventType = "scale_waiting"
)

// Event is one typed change of the registry. Fields that do not apply to
// the type are empty. A deleted revision, process type or env var is
// reported as RevChanged, ProcChanged or EnvChanged with Deleted set.
type Event struct {
	Revision int64         `json:"revision"`
	Type     EventType     `json:"type"`
	Key      string        `json:"key"`
	App      string        `json:"app,omitempty"`
	Rev      string        `json:"rev,omitempty"`
	Proc     string        `json:"proc,omitempty"`
	Ticket   string        `json:"ticket,omitempty"`
	Instance string        `json:"instance,omitempty"`
	Host     string        `json:"host,omitempty"`
	State    InstanceState `json:"state,omitempty"`
	Deleted  bool          `json:"deleted,omitempty"`
	// Err reports a value that did not decode (the event is skipped, the
	// watch goes on), a compaction (ErrCompacted; Revision is the last
	// revision lost and the watch resumes at the next, the compact
	// revision) or a watch error (the watch resumes where it was).
	Err error `json:"-"`
}

// events maps the raw changes of one watch response to typed events. The
// tickets touched per revision are noted first, so that a claim deleted
// along with its ticket (Complete, Release) is not also reported.
func (r *Registry) events(evs []*clientv3.Event) []Event {
	tickets := map[string]bool{}
	for _, ev := range evs {
		if id, ok := strings.CutPrefix(string(ev.Kv.Key), r.ticketsDir()); ok {
			tickets[fmt.Sprintf("%s@%d", id, ev.Kv.ModRevision)] = true
		}
	}
	var out []Event
	for _, ev := range evs {
		if e, ok := r.event(ev, tickets); ok {
			out = append(out, e)
		}
	}
	return out
}

// Events returns the typed events of revisions from to to, inclusive (to
// 0: up to the current revision), as WatchEvents would send them. It reads
// them with a watch from from and asks etcd for progress notifications:
// one at or past to means every event up to it was delivered. ErrCompacted
// if from is older than the compaction.
func (r *Registry) Events(ctx context.Context, from, to int64) ([]Event, error) {
	if from <= 0 {
		return nil, fmt.Errorf("%w: events from revision %d", ErrInvalid, from)
	}
	if to <= 0 {
		cur, err := r.CurrentRevision(ctx)
		if err != nil {
			return nil, err
		}
		to = cur
	}
	if from > to {
		return nil, nil
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// A watcher of its own: its progress requests concern only this watch,
	// and closing it ends the watch at once.
	w := clientv3.NewWatcher(r.cli)
	defer w.Close()
	wch := w.Watch(ctx, r.prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(from))
	if err := w.RequestProgress(ctx); err != nil {
		return nil, fmt.Errorf("registry: events: %w", err)
	}
	// etcd answers a progress request only once the watch has caught up
	// with the store; one sent while it still replays history is dropped.
	// When the last revisions up to `to` are outside the prefix (another
	// user of the same etcd wrote them), no event of ours ends the read,
	// so progress is asked for again until it comes.
	var asker sync.WaitGroup
	defer asker.Wait()
	askCtx, stopAsking := context.WithCancel(ctx)
	defer stopAsking()
	asker.Go(func() {
		tick := time.NewTicker(progressRetry)
		defer tick.Stop()
		for {
			select {
			case <-askCtx.Done():
				return
			case <-tick.C:
				_ = w.RequestProgress(askCtx) // a failure shows in the watch
			}
		}
	})
	var out []Event
	for resp := range etcdwatch.Responses(ctx, wch) {
		if resp.CompactRevision != 0 {
			return nil, fmt.Errorf("%w: events from revision %d to %d are gone", ErrCompacted, from, resp.CompactRevision-1)
		}
		if err := resp.Err(); err != nil {
			return nil, fmt.Errorf("registry: events: %w", err)
		}
		for _, e := range r.events(resp.Events) {
			if e.Revision > to {
				return out, nil
			}
			out = append(out, e)
		}
		if n := len(resp.Events); n > 0 && resp.Events[n-1].Kv.ModRevision >= to {
			return out, nil
		}
		if resp.IsProgressNotify() && resp.Header.Revision >= to {
			return out, nil
		}
		if resp.IsProgressNotify() {
			if err := w.RequestProgress(ctx); err != nil {
				return nil, fmt.Errorf("registry: events: %w", err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("registry: events: the watch ended before revision %d", to)
}

// progressRetry is how often Events asks again for a progress
// notification while it waits for the revision it reads up to.
const progressRetry = 250 * time.Millisecond

// WatchEvents streams typed registry events from fromRevision (0 = from
// now). To resume, pass the last Event.Revision + 1. A goroutine owned by
// ctx runs the watch; it closes the channel after ctx ends.
func (r *Registry) WatchEvents(ctx context.Context, fromRevision int64) <-chan Event {
	ch := make(chan Event, 64)
	go func() {
		defer close(ch)
		r.watchEvents(ctx, fromRevision, ch)
	}()
	return ch
}

func (r *Registry) watchEvents(ctx context.Context, rev int64, ch chan<- Event) {
	send := func(ev Event) bool {
		select {
		case ch <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	pause := backoff.New(rewatchBackoff)
	for first := true; ctx.Err() == nil; first = false {
		if !first && pause.Wait(ctx) != nil {
			return
		}
		if rev <= 0 {
			cur, err := r.CurrentRevision(ctx)
			if err != nil {
				if ctx.Err() == nil && !send(Event{Err: err}) {
					return
				}
				continue
			}
			rev = cur + 1
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.cli.Watch(wctx, r.prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(rev))
		for resp := range etcdwatch.Responses(ctx, wch) {
			if resp.CompactRevision != 0 {
				// Revision is the last one accounted for (lost), so a
				// caller that resumes at Revision+1 misses nothing still
				// stored: the compact revision's own events remain.
				if !send(Event{Revision: resp.CompactRevision - 1, Err: fmt.Errorf("%w: events from revision %d to %d are gone", ErrCompacted, rev, resp.CompactRevision-1)}) {
					break
				}
				rev = resp.CompactRevision
				break
			}
			if err := resp.Err(); err != nil {
				if ctx.Err() == nil && !send(Event{Err: fmt.Errorf("registry: watch events: %w", err)}) {
					break
				}
				break
			}
			pause.Reset()
			for _, e := range r.events(resp.Events) {
				if !send(e) {
					cancel()
					return
				}
			}
			if n := len(resp.Events); n > 0 {
				rev = resp.Events[n-1].Kv.ModRevision + 1
			}
		}
		cancel()
	}
}

// event maps one etcd event to an Event; ok is false for keys that make no
// event (index and generation keys).
func (r *Registry) event(ev *clientv3.Event, tickets map[string]bool) (Event, bool) {
	kv := ev.Kv
	del := ev.Type == clientv3.EventTypeDelete
	e := Event{Revision: kv.ModRevision, Key: string(kv.Key), Deleted: del}
	val := kv
	if del && ev.PrevKv != nil {
		val = ev.PrevKv
	}
	parts := strings.Split(r.rel(kv.Key), "/")
	switch {
	case parts[0] == "apps" && len(parts) == 2:
		e.App, e.Type = parts[1], AppChanged
		if del {
			e.Type = AppDeleted
		} else {
			_, e.Err = decodeApp(kv.Value, kv.Key, parts[1], kv.ModRevision)
		}
	case parts[0] == "apps" && len(parts) == 4 && parts[2] == "revs":
		e.App, e.Rev, e.Type = parts[1], parts[3], RevChanged
		if !del {
			_, e.Err = decodeRevision(kv.Key, kv.Value, kv.ModRevision, parts[1], parts[3])
		}
	case parts[0] == "apps" && len(parts) == 4 && parts[2] == "procs":
		e.App, e.Proc, e.Type = parts[1], parts[3], ProcChanged
		if !del {
			_, e.Err = decodeProc(kv.Key, kv.Value, kv.ModRevision, parts[1], parts[3])
		}
	case parts[0] == "apps" && len(parts) == 4 && parts[2] == "env":
		e.App, e.Type = parts[1], EnvChanged
		if !del {
			_, e.Err = decodeEnv(kv.Key, parts[1], parts[3], kv.Value)
		}
	case parts[0] == "apps" && len(parts) == 5 && parts[2] == "scale":
		e.App, e.Rev, e.Proc, e.Type = parts[1], parts[3], parts[4], ScaleChanged
		if !del {
			_, e.Err = decodeScale(kv.Key, kv.Value)
		}
	case parts[0] == "tickets" && len(parts) == 2:
		e.Ticket = parts[1]
		switch {
		case del:
			e.Type = TicketDone
		case kv.CreateRevision == kv.ModRevision:
			e.Type = TicketCreated
		default:
			e.Type = TicketReleased // only Release rewrites a ticket
		}
		if del && ev.PrevKv == nil {
			break
		}
		t, err := decodeTicket(val, parts[1])
		if err != nil {
			e.Err = err
			break
		}
		e.App, e.Rev, e.Proc, e.Instance, e.Host = t.App, t.Rev, t.Proc, t.Instance, t.Host
	case parts[0] == "claims" && len(parts) == 2:
		e.Ticket, e.Host = parts[1], string(val.Value)
		e.Type = TicketClaimed
		if del {
			if tickets[fmt.Sprintf("%s@%d", parts[1], kv.ModRevision)] {
				return e, false // reported by the ticket's own event
			}
			e.Type = TicketReleased
		} else {
			_, e.Err = decodeClaim(kv.Key, kv.Value)
		}
	case parts[0] == "instances" && len(parts) == 2:
		e.Instance, e.Type = parts[1], InstanceChanged
		if del {
			e.Type = InstanceDeleted
			if ev.PrevKv == nil {
				break
			}
		}
		in, err := decodeInstance(val, parts[1])
		if err != nil {
			e.Err = err
			break
		}
		e.App, e.Rev, e.Proc, e.Host, e.State, e.Ticket = in.App, in.Rev, in.Proc, in.Host, in.State, in.Ticket
	case parts[0] == "hosts" && len(parts) == 2:
		e.Host = parts[1]
		switch {
		case del:
			e.Type = HostLeft
		case kv.CreateRevision == kv.ModRevision:
			e.Type = HostJoined
		default:
			e.Type = HostChanged
		}
		if !del {
			_, e.Err = decodeHost(kv, parts[1])
		}
	case parts[0] == "status" && len(parts) == 4:
		e.App, e.Rev, e.Proc, e.Type = parts[1], parts[2], parts[3], ScaleWaiting
		if !del {
			e.Err = decodeJSON(KindScaleStatus, kv.Key, kv.Value, &ScaleStatus{})
		}
	case parts[0] == "drains" && len(parts) == 2:
		e.Host = parts[1]
		if del {
			e.Type = HostUndrained
		} else {
			e.Type = HostDrained
			_, e.Err = decodeDrain(kv, parts[1])
		}
	default:
		return e, false
	}
	return e, true
}
