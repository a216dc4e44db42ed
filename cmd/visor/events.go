package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newEventsCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events",
		Short: "show registry events (app, rev, proc, env, scale, ticket, instance, host changes)",
		Long: `Without -f, events prints the events from --since up to the registry's
current revision and exits. With -f it keeps following new events until
interrupted; --since then resumes from an earlier revision (for example the
last revision a previous run printed, plus one). With -o json each event is
one JSON object per line.

Each event shows when it happened: etcd keeps no time per revision, so the
time comes from the record (an instance's state change, a ticket, app or
revision created, a host joined or updated, a drain); with -f a live change
whose record holds no time (a delete, an env, scale or proc write, a claim)
shows when it arrived. Otherwise the time is "-" (omitted in JSON).`,
		RunE: runWith(e, runEvents),
	}
	cmd.Flags().BoolP("follow", "f", false, "follow: keep printing new events")
	cmd.Flags().Int64("since", 0, "first etcd revision to show (0 = from now with -f)")
	return cmd
}

// eventOut is the CLI's JSON form of a registry event.
type eventOut struct {
	// Time is when the change happened (registry.Event.Time); omitted
	// when the registry cannot tell.
	Time     *time.Time `json:"time,omitempty"`
	Revision int64      `json:"revision"`
	Type     string     `json:"type"`
	Key      string     `json:"key"`
	App      string     `json:"app,omitempty"`
	Rev      string     `json:"rev,omitempty"`
	Proc     string     `json:"proc,omitempty"`
	Ticket   string     `json:"ticket,omitempty"`
	Instance string     `json:"instance,omitempty"`
	Host     string     `json:"host,omitempty"`
	State    string     `json:"state,omitempty"`
	Error    string     `json:"error,omitempty"`
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
	registry.ScaleWaiting:    "scale_waiting",
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
	if !ev.Time.IsZero() {
		t := ev.Time.UTC()
		out.Time = &t
	}
	if ev.Err != nil {
		out.Error = ev.Err.Error()
	}
	return out
}

// eventTimeFormat is how events print their time: UTC, milliseconds.
const eventTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// line formats the event for table output, one line per event: its time
// ("-" when the registry cannot tell), revision, type and fields.
func (o eventOut) line() string {
	var b strings.Builder
	when := "-"
	if o.Time != nil {
		when = o.Time.Format(eventTimeFormat)
	}
	fmt.Fprintf(&b, "%s %d %s", when, o.Revision, o.Type)
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
	follow := flagBool(e, "follow")
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
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
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

// historyEvents prints the events from since up to the current revision.
func historyEvents(ctx context.Context, r *registry.Registry, p eventPrinter, since int64) error {
	evs, err := r.Events(ctx, since, 0)
	if err != nil {
		return fmt.Errorf("events since %d: %w", since, err)
	}
	for _, ev := range evs {
		o := newEventOut(ev)
		if err := p.print(o, o.line()); err != nil {
			return err
		}
	}
	return nil
}

// drain cancels a registry watch and waits for its channel to close, so
// that the watch's goroutine has ended when the command returns.
func drain[T any](cancel context.CancelFunc, ch <-chan T) {
	cancel()
	for range ch {
	}
}
