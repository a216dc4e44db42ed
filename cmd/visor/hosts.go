package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newHostCmd(e *env) *cobra.Command {
	return group(&cobra.Command{Use: "host", Short: "list, drain and undrain the hosts whose agents are alive"},
		newHostListCmd(e), newDrainCmd(e), newUndrainCmd(e))
}

func newHostListCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "list the hosts whose agents are alive",
		Long: `With -w, it prints the current hosts and then one line per host that
joins or leaves, until interrupted. With -o json and -w every line is a JSON
object: {"event":"present"|"joined"|"left","revision":N,"host":{...}}.`,
		RunE: runWith(e, runHosts),
	}
	cmd.Flags().BoolP("watch", "w", false, "watch: keep printing hosts that join or leave")
	return cmd
}

// hostOut is the CLI's JSON form of a host.
type hostOut struct {
	ID       string            `json:"id"`
	Addr     string            `json:"addr"`
	Labels   map[string]string `json:"labels"`
	Capacity int               `json:"capacity"`
	Version  string            `json:"version"`
	Started  time.Time         `json:"started"`
	Updated  time.Time         `json:"updated"`
	Load     hostLoadOut       `json:"load"`
	Draining bool              `json:"draining"`
}

type hostLoadOut struct {
	Load1          float64 `json:"load1"`
	MemUsedPercent float64 `json:"mem_used_percent"`
	Instances      int     `json:"instances"`
}

// hostEventOut is one line of `visor host list -w -o json`.
type hostEventOut struct {
	Event    string   `json:"event"`
	Revision int64    `json:"revision"`
	Host     *hostOut `json:"host,omitempty"`
	HostID   string   `json:"host_id"`
}

func newHostOut(h registry.Host) hostOut {
	out := hostOut{
		ID: h.ID, Addr: h.Addr, Labels: h.Labels, Capacity: h.Capacity, Version: h.Version,
		Started: h.Started, Updated: h.Updated, Draining: h.Draining,
		Load: hostLoadOut{Load1: h.Load.Load1, MemUsedPercent: h.Load.MemUsedPercent, Instances: h.Load.Instances},
	}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	return out
}

func (h hostOut) labels() string {
	parts := make([]string, 0, len(h.Labels))
	for _, k := range sortedKeys(h.Labels) {
		parts = append(parts, k+"="+h.Labels[k])
	}
	return dash(strings.Join(parts, ","))
}

func (h hostOut) capacity() string {
	if h.Capacity == 0 {
		return fmt.Sprintf("%d/-", h.Load.Instances)
	}
	return fmt.Sprintf("%d/%d", h.Load.Instances, h.Capacity)
}

func writeHostTable(w io.Writer, hosts []hostOut) {
	fmt.Fprintln(w, "HOST\tADDR\tINSTANCES\tLOAD1\tMEM%\tLABELS\tVERSION\tUPDATED\tSTATUS")
	for _, h := range hosts {
		status := "up"
		if h.Draining {
			status = "draining"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%.2f\t%.0f\t%s\t%s\t%s\t%s\n", h.ID, dash(h.Addr), h.capacity(),
			h.Load.Load1, h.Load.MemUsedPercent, h.labels(), dash(h.Version), ago(h.Updated), status)
	}
}

func runHosts(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 0, ""); err != nil {
		return err
	}
	watch := flagBool(e, "watch")
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		var from int64
		if watch {
			// Read the revision before listing, and watch from the next one,
			// so that no join or leave falls between the list and the watch.
			rev, err := r.CurrentRevision(ctx)
			if err != nil {
				return fmt.Errorf("list hosts: %w", err)
			}
			from = rev + 1
		}
		hosts, err := r.Hosts(ctx)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("list hosts: %w", err)
		}
		out := make([]hostOut, 0, len(hosts))
		for _, h := range hosts {
			out = append(out, newHostOut(h))
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		if !watch {
			return e.print(out, func(w io.Writer) { writeHostTable(w, out) })
		}
		asJSON, _ := e.jsonOutput()
		p := eventPrinter{w: e.stdout, json: asJSON}
		if asJSON {
			for i := range out {
				if err := p.print(hostEventOut{Event: "present", Revision: from - 1, Host: &out[i], HostID: out[i].ID}, ""); err != nil {
					return err
				}
			}
		} else if err := e.print(out, func(w io.Writer) { writeHostTable(w, out) }); err != nil {
			return err
		}
		return watchHosts(ctx, r, p, from)
	})
}

// watchHosts prints host joins, leaves and drains from revision from until ctx ends.
func watchHosts(ctx context.Context, r *registry.Registry, p eventPrinter, from int64) error {
	ctx, cancel := context.WithCancel(ctx)
	events := r.WatchEvents(ctx, from)
	defer drain(cancel, events)
	for ev := range events {
		if ev.Err != nil {
			continue
		}
		var o hostEventOut
		switch ev.Type {
		case registry.HostJoined:
			o = hostEventOut{Event: "joined", Revision: ev.Revision, HostID: ev.Host}
			h, err := r.Host(ctx, ev.Host)
			switch {
			case err == nil:
				ho := newHostOut(h)
				o.Host = &ho
			case errors.Is(err, registry.ErrNotFound), ctx.Err() != nil:
				// Gone again already; the leave follows.
			default:
				return fmt.Errorf("watch hosts: host %s: %w", ev.Host, err)
			}
		case registry.HostLeft:
			o = hostEventOut{Event: "left", Revision: ev.Revision, HostID: ev.Host}
		case registry.HostDrained:
			o = hostEventOut{Event: "draining", Revision: ev.Revision, HostID: ev.Host}
		case registry.HostUndrained:
			o = hostEventOut{Event: "undrained", Revision: ev.Revision, HostID: ev.Host}
		default:
			continue
		}
		line := fmt.Sprintf("%d %s %s", o.Revision, o.Event, o.HostID)
		if o.Host != nil && o.Host.Addr != "" {
			line += " addr=" + o.Host.Addr
		}
		if err := p.print(o, line); err != nil {
			return err
		}
	}
	return nil
}
