package registry

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/internal/etcdwatch"
)

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
	// DeployChanged reports a change of a deployment record: created,
	// stepped, acted on, ended (the active key's delete has Deleted set).
	DeployChanged EventType = "deploy_changed"
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
	// Time is when the change happened, as far as the registry can tell;
	// etcd keeps no time per revision, so it comes from the record: an
	// instance's Since when the change is one of state, a created ticket's,
	// app's or revision's Created, a revision's release's Released, a
	// host's Started (joined) or Updated, a drain's or a new scale
	// status's Since. A change whose record holds
	// no time of it (a delete, an env, scale or proc write, a claim, a
	// released ticket, an instance written in the same state) has a zero
	// Time from Events; WatchEvents gives such
	// a change the time it received it when the change is live (newer
	// than the store was when the watch began), which is within
	// milliseconds of the write.
	Time time.Time `json:"time,omitzero"`
	// Reason is an instance event's record's Reason (why it failed,
	// exited or restarts), so that a watcher can keep an instance's state
	// history without reading each record.
	Reason string `json:"reason,omitempty"`
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
		return nil, errorf("registry: events: %w", err)
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
			return nil, errorf("registry: events: %w", err)
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
				return nil, errorf("registry: events: %w", err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, errorf("registry: events: the watch ended before revision %d", to)
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
	// liveAfter is the store's revision when the watch began: changes
	// after it are live, and one without a time of its own gets the time
	// it arrived. -1 until known.
	liveAfter := int64(-1)
	if rev <= 0 {
		liveAfter = 0 // set below, from the current revision
	}
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
			if liveAfter == 0 {
				liveAfter = cur
			}
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
				if ctx.Err() == nil && !send(Event{Err: errorf("registry: watch events: %w", err)}) {
					break
				}
				break
			}
			pause.Reset()
			if liveAfter < 0 {
				liveAfter = resp.Header.Revision
			}
			now := time.Now()
			for _, e := range r.events(resp.Events) {
				if e.Time.IsZero() && liveAfter >= 0 && e.Revision > liveAfter {
					e.Time = now
				}
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
	// val is the record the event is about: the new value of a put, the
	// removed one of a delete (nil if the watch did not send it).
	val := kv
	if del {
		val = ev.PrevKv
	}
	parts := strings.Split(r.rel(kv.Key), "/")
	switch {
	case parts[0] == "apps":
		return e, appEvent(&e, kv, parts)
	case parts[0] == "status" && len(parts) == 4:
		e.App, e.Rev, e.Proc, e.Type = parts[1], parts[2], parts[3], ScaleWaiting
		if !del {
			var st ScaleStatus
			e.Err = decodeJSON(KindScaleStatus, kv.Key, kv.Value, &st)
			if kv.CreateRevision == kv.ModRevision {
				e.Time = st.Since
			}
		}
		return e, true
	case parts[0] == "deploys" && len(parts) == 3, parts[0] == "deploying" && len(parts) == 2:
		e.App, e.Type = parts[1], DeployChanged
		if !del {
			_, e.Err = decodeDeploy(kv.Key, kv.Value, kv.ModRevision, parts[1])
		}
		return e, true
	case len(parts) != 2:
		return e, false
	}
	switch parts[0] {
	case "tickets":
		ticketEvent(&e, kv, val, parts[1])
	case "claims":
		e.Ticket, e.Type = parts[1], TicketClaimed
		if val != nil {
			e.Host = string(val.Value)
		}
		if !del {
			_, e.Err = decodeClaim(kv.Key, kv.Value)
		} else if tickets[fmt.Sprintf("%s@%d", parts[1], kv.ModRevision)] {
			return e, false // reported by the ticket's own event
		} else {
			e.Type = TicketReleased
		}
	case "instances":
		instanceEvent(&e, val, ev.PrevKv, parts[1])
	case "hosts":
		e.Host, e.Type = parts[1], HostChanged
		switch {
		case del:
			e.Type = HostLeft
		case kv.CreateRevision == kv.ModRevision:
			e.Type = HostJoined
		}
		if !del {
			var h Host
			h, e.Err = decodeHost(kv, parts[1])
			e.Time = h.Updated
			if e.Type == HostJoined {
				e.Time = h.Started
			}
		}
	case "drains":
		e.Host, e.Type = parts[1], HostUndrained
		if !del {
			e.Type = HostDrained
			var d Drain
			d, e.Err = decodeDrain(kv, parts[1])
			e.Time = d.Since
		}
	default:
		return e, false
	}
	return e, true
}

// appEvent fills e from a change of kv, a key under apps/ split into
// parts; it reports false for keys that make no event.
func appEvent(e *Event, kv *mvccpb.KeyValue, parts []string) bool {
	if len(parts) < 2 {
		return false
	}
	del, app := e.Deleted, parts[1]
	e.App = app
	switch {
	case len(parts) == 2:
		e.Type = AppChanged
		if del {
			e.Type = AppDeleted
		} else {
			var a App
			a, e.Err = decodeApp(kv.Value, kv.Key, app, kv.ModRevision)
			if kv.CreateRevision == kv.ModRevision {
				e.Time = a.Created
			}
		}
	case len(parts) == 4 && parts[2] == "revs":
		e.Rev, e.Type = parts[3], RevChanged
		if !del {
			var rv Revision
			rv, e.Err = decodeRevision(kv.Key, kv.Value, kv.ModRevision, app, parts[3])
			switch {
			case kv.CreateRevision == kv.ModRevision:
				e.Time = rv.Created
			case rv.Release != nil:
				e.Time = rv.Release.Released // the one write after its creation
			}
		}
	case len(parts) == 4 && parts[2] == "procs":
		e.Proc, e.Type = parts[3], ProcChanged
		if !del {
			_, e.Err = decodeProc(kv.Key, kv.Value, kv.ModRevision, app, parts[3])
		}
	case len(parts) == 4 && parts[2] == "env":
		e.Type = EnvChanged
		if !del {
			_, e.Err = decodeEnv(kv.Key, app, parts[3], kv.Value)
		}
	case len(parts) == 5 && parts[2] == "scale":
		e.Rev, e.Proc, e.Type = parts[3], parts[4], ScaleChanged
		if !del {
			_, e.Err = decodeScale(kv.Key, kv.Value)
		}
	default:
		return false
	}
	return true
}

// ticketEvent fills e from a change of ticket id (kv), whose record is val
// (nil: a delete the watch sent without it).
func ticketEvent(e *Event, kv, val *mvccpb.KeyValue, id string) {
	e.Ticket = id
	switch {
	case e.Deleted:
		e.Type = TicketDone
	case kv.CreateRevision == kv.ModRevision:
		e.Type = TicketCreated
	default:
		e.Type = TicketReleased // only Release rewrites a ticket
	}
	if val == nil {
		return
	}
	t, err := decodeTicket(val, id)
	if err != nil {
		e.Err = err
		return
	}
	e.App, e.Rev, e.Proc, e.Instance, e.Host = t.App, t.Rev, t.Proc, t.Instance, t.Host
	if e.Type == TicketCreated {
		e.Time = t.Created
	}
}

// instanceEvent fills e from a change of instance id, whose record is val
// (nil: a delete the watch sent without it); prev is the record before the
// change (nil if none or not sent).
func instanceEvent(e *Event, val, prev *mvccpb.KeyValue, id string) {
	e.Instance, e.Type = id, InstanceChanged
	if e.Deleted {
		e.Type = InstanceDeleted
	}
	if val == nil {
		return
	}
	in, err := decodeInstance(val, id)
	if err != nil {
		e.Err = err
		return
	}
	e.App, e.Rev, e.Proc, e.Host, e.State, e.Ticket = in.App, in.Rev, in.Proc, in.Host, in.State, in.Ticket
	if !e.Deleted && !in.Since.IsZero() {
		// Since dates this change only if the state changed (a write
		// in the same state, e.g. of its health, keeps the old Since).
		if prev == nil {
			e.Time = in.Since // created, or the watch sent no old record
		} else if old, err := decodeInstance(prev, id); err != nil || old.State != in.State {
			e.Time = in.Since
		}
	}
	e.Reason = in.Reason
}
