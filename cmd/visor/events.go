package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/registry"
)

func init() {
	register(&command{
		Name:  "events",
		Short: "show registry events (app, rev, proc, env, scale, ticket, instance, host changes)",
		Long: `Without -f, events prints the events from --since up to the registry's
current revision and exits. With -f it keeps following new events until
interrupted; --since then resumes from an earlier revision (for example the
last revision a previous run printed, plus one). With -o json each event is
one JSON object per line.`,
		Flags: func(fs *flag.FlagSet) {
			fs.Bool("f", false, "follow: keep printing new events")
			fs.Int64("since", 0, "first etcd revision to show (0 = from now with -f)")
		},
		Run: runEvents,
	})
}

// eventOut is the CLI's JSON form of a registry event.
type eventOut struct {
	Revision int64  `json:"revision"`
	Type     string `json:"type"`
	Key      string `json:"key"`
	App      string `json:"app,omitempty"`
	Rev      string `json:"rev,omitempty"`
	Proc     string `json:"proc,omitempty"`
	Ticket   string `json:"ticket,omitempty"`
	Instance string `json:"instance,omitempty"`
	Host     string `json:"host,omitempty"`
	State    string `json:"state,omitempty"`
	Error    string `json:"error,omitempty"`
}

// eventTypeNames are the CLI's stable names of the registry event types.
var eventTypeNames = map[registry.EventType]string{
	registry.AppChanged:      "app_changed",
	registry.AppDeleted:      "app_deleted",
	registry.RevChanged:      "rev_changed",
	registry.ProcChanged:     "proc_changed",
	registry.EnvChanged:      "env_changed",
	registry.ScaleChanged:    "scale_changed",
	registry.TicketCreated:   "ticket_created",
	registry.TicketClaimed:   "ticket_claimed",
	registry.TicketReleased:  "ticket_released",
	registry.TicketDone:      "ticket_done",
	registry.InstanceChanged: "instance_changed",
	registry.InstanceDeleted: "instance_deleted",
	registry.HostJoined:      "host_joined",
	registry.HostLeft:        "host_left",
	registry.HostChanged:     "host_changed",
	registry.HostDrained:     "host_drained",
	registry.HostUndrained:   "host_undrained",
}

func newEventOut(ev registry.Event) eventOut {
	name, ok := eventTypeNames[ev.Type]
	if !ok {
		name = string(ev.Type)
	}
	if ev.Err != nil && ev.Type == "" {
		name = "error"
	}
	out := eventOut{
		Revision: ev.Revision, Type: name, Key: ev.Key, App: ev.App, Rev: ev.Rev, Proc: ev.Proc,
		Ticket: ev.Ticket, Instance: ev.Instance, Host: ev.Host, State: string(ev.State),
	}
	if ev.Err != nil {
		out.Error = ev.Err.Error()
	}
	return out
}

// line formats the event for table output, one line per event.
func (o eventOut) line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s", o.Revision, o.Type)
	for _, f := range []struct{ k, v string }{
		{"app", o.App}, {"rev", o.Rev}, {"proc", o.Proc}, {"ticket", o.Ticket},
		{"instance", o.Instance}, {"host", o.Host}, {"state", o.State},
	} {
		if f.v != "" {
			fmt.Fprintf(&b, " %s=%s", f.k, f.v)
		}
	}
	if o.Error != "" {
		fmt.Fprintf(&b, " key=%s error=%q", o.Key, o.Error)
	}
	return b.String()
}

// eventPrinter writes events one per line, as text or as JSON lines.
type eventPrinter struct {
	w    io.Writer
	json bool
}

func (p eventPrinter) print(v any, line string) error {
	if p.json {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintln(p.w, line)
	return err
}

func runEvents(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 0, ""); err != nil {
		return err
	}
	follow := flagBool(e, "f")
	since := flagValue[int64](e, "since")
	switch {
	case since < 0:
		return usageError("--since %d: must not be negative", since)
	case since == 0 && !follow:
		return usageError("events: give --since REV, -f, or both")
	}
	asJSON, err := e.jsonOutput()
	if err != nil {
		return err
	}
	p := eventPrinter{w: e.stdout, json: asJSON}
	return withRegistry(ctx, e, func(r *registry.Registry) error {
		if follow {
			return followEvents(ctx, r, p, since)
		}
		return historyEvents(ctx, r, p, since)
	})
}

// followEvents prints events from since (0 = from now) until ctx ends.
func followEvents(ctx context.Context, r *registry.Registry, p eventPrinter, since int64) error {
	ctx, cancel := context.WithCancel(ctx)
	events := r.WatchEvents(ctx, since)
	defer drain(cancel, events)
	for ev := range events {
		o := newEventOut(ev)
		if err := p.print(o, o.line()); err != nil {
			return err
		}
	}
	// The watch ends only when ctx does (interrupt): a clean exit.
	return nil
}

// historyIdle bounds how long historyEvents waits for an event it expects
// when the registry reports none; a safety net should the registry stop
// reporting a kind of key that emitsEvent still lists.
const historyIdle = 3 * time.Second

// historyEvents prints the events from since up to the current revision.
// A raw etcd watch on the prefix first finds the last revision up to the
// current one that changed keys the registry reports, and which those keys
// were; the registry's typed events are then printed until each of those
// keys has been reported.
func historyEvents(ctx context.Context, r *registry.Registry, p eventPrinter, since int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cur, err := r.CurrentRevision(ctx)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	if since > cur {
		return nil
	}
	until, lastKeys, err := lastChange(ctx, r.Client(), r.Prefix(), since, cur)
	if err != nil {
		return fmt.Errorf("events since %d: %w", since, err)
	}
	if until == 0 {
		return nil
	}
	idle := time.NewTimer(historyIdle)
	defer idle.Stop()
	events := r.WatchEvents(ctx, since)
	defer drain(cancel, events)
	for {
		select {
		case <-idle.C:
			return nil
		case ev, ok := <-events:
			if !ok {
				return ctx.Err()
			}
			if ev.Revision > until {
				return nil
			}
			o := newEventOut(ev)
			if err := p.print(o, o.line()); err != nil {
				return err
			}
			if ev.Revision == until {
				delete(lastKeys, strings.TrimPrefix(ev.Key, r.Prefix()))
				if len(lastKeys) == 0 {
					return nil
				}
			}
			idle.Reset(historyIdle)
		}
	}
}

// rawChange is one key change seen by the raw watch, key relative to the
// prefix.
type rawChange struct {
	key string
	del bool
}

// emitsEvent reports whether the registry reports a change of key (relative
// to the prefix) as an event; changes holds every change of the same
// revision. It mirrors registry's event mapping: index and generation keys
// make no event, nor does a claim deleted along with its ticket.
func emitsEvent(c rawChange, changes []rawChange) bool {
	parts := strings.Split(c.key, "/")
	switch {
	case parts[0] == "apps" && len(parts) == 2:
		return true
	case parts[0] == "apps" && len(parts) == 4:
		return parts[2] == "revs" || parts[2] == "procs" || parts[2] == "env"
	case parts[0] == "apps" && len(parts) == 5:
		return parts[2] == "scale"
	case parts[0] == "claims" && len(parts) == 2:
		if !c.del {
			return true
		}
		for _, o := range changes {
			if o.key == "tickets/"+parts[1] {
				return false
			}
		}
		return true
	case len(parts) == 2:
		return parts[0] == "tickets" || parts[0] == "instances" || parts[0] == "hosts" || parts[0] == "drains"
	}
	return false
}

// lastChange returns the last revision in [since, cur] that changed keys
// under prefix which make registry events, with those keys (relative to
// prefix); 0 if there is none. It watches from since and asks etcd for a
// progress notification, which etcd sends once every event up to its
// revision has been delivered.
func lastChange(ctx context.Context, cli *clientv3.Client, prefix string, since, cur int64) (int64, map[string]bool, error) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	w := clientv3.NewWatcher(cli)
	defer w.Close()
	var (
		last     int64
		lastKeys map[string]bool
		rev      int64
		group    []rawChange
	)
	// flush evaluates the changes of revision rev.
	flush := func() {
		keys := map[string]bool{}
		for _, c := range group {
			if emitsEvent(c, group) {
				keys[c.key] = true
			}
		}
		if len(keys) > 0 {
			last, lastKeys = rev, keys
		}
		group = group[:0]
	}
	wch := w.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(since))
	if err := w.RequestProgress(ctx); err != nil {
		return 0, nil, err
	}
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return 0, nil, err
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision > cur {
				flush()
				return last, lastKeys, nil
			}
			if ev.Kv.ModRevision != rev {
				flush()
				rev = ev.Kv.ModRevision
			}
			group = append(group, rawChange{
				key: strings.TrimPrefix(string(ev.Kv.Key), prefix),
				del: ev.Type == clientv3.EventTypeDelete,
			})
		}
		if resp.IsProgressNotify() && resp.Header.Revision >= cur {
			flush()
			return last, lastKeys, nil
		}
		if err := w.RequestProgress(ctx); err != nil {
			return 0, nil, err
		}
	}
	return 0, nil, ctx.Err()
}

// drain cancels a registry watch and waits for its channel to close, so
// that the watch's goroutine has ended when the command returns.
func drain[T any](cancel context.CancelFunc, ch <-chan T) {
	cancel()
	for range ch {
	}
}
