package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/registry"
)

func newLookupCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lookup NAME[@VERSION-OR-RANGE]",
		Short: "find the endpoints of a service (app.proc or an external name)",
		Long: `NAME is a service: "<app>.<proc>" for instances Visor runs, or the name an
external process registered with. The optional @VERSION-OR-RANGE selects
versions: an exact version (web.api@1.2.3), a semver range (web.api@^1.2,
web.api@~1.2, "web.api@>=1.0 <2"), or any other string, matched exactly
(a revision name). --healthy drops endpoints failing their checks.

With -w, lookup prints the current endpoints as register events, then
follows: one line per register/free event until interrupted. With -o json
each event is one JSON object per line.`,
		RunE: runWith(e, runLookup),
	}
	cmd.Flags().Bool("healthy", false, "only healthy endpoints")
	cmd.Flags().BoolP("watch", "w", false, "watch: keep printing register/free events")
	return cmd
}

func runLookup(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "NAME[@VERSION-OR-RANGE]"); err != nil {
		return err
	}
	name, version := discovery.SplitNameVersion(args[0])
	if err := discovery.ValidateName(name); err != nil {
		return usageError("%s", err)
	}
	m, err := discovery.ParseVersionQuery(version)
	if err != nil {
		return usageError("%s", err)
	}
	healthy, watch := flagBool(e, "healthy"), flagBool(e, "watch")
	asJSON, err := e.jsonOutput()
	if err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		store := discovery.NewStore(r.Client(), r.Prefix(), nil)
		eps, rev, err := store.LookupRevision(ctx, name, version, healthy)
		if errors.Is(err, discovery.ErrInvalid) {
			return usageError("%s", err)
		}
		if err != nil {
			return fmt.Errorf("lookup %s: %w", args[0], err)
		}
		if !watch {
			return printEndpoints(e, eps)
		}
		w := &lookupWatcher{out: e.stdout, json: asJSON, match: m, healthy: healthy, live: map[string]bool{}}
		for _, ep := range eps {
			if err := w.handle(discovery.Event{Type: discovery.EventRegister, Endpoint: ep, Revision: ep.ModRevision}); err != nil {
				return err
			}
		}
		for ev := range store.Watch(ctx, name, rev+1) {
			if ev.Err != nil && ev.Type == "" {
				return fmt.Errorf("watch %s: %w", name, ev.Err)
			}
			if err := w.handle(ev); err != nil {
				return err
			}
		}
		return nil // the watch ends only when ctx does (interrupt): a clean exit
	})
}

// endpointOut is the CLI's JSON form of an endpoint.
type endpointOut struct {
	Service    string            `json:"service"`
	Version    string            `json:"version"`
	ID         string            `json:"id"`
	Host       string            `json:"host"`
	Addr       string            `json:"addr"`
	Port       int               `json:"port"`
	Healthy    bool              `json:"healthy"`
	Source     string            `json:"source"`
	Meta       map[string]string `json:"meta"`
	Registered string            `json:"registered"`
}

func newEndpointOut(ep discovery.Endpoint) endpointOut {
	meta := ep.Meta
	if meta == nil {
		meta = map[string]string{}
	}
	return endpointOut{
		Service: ep.Service, Version: ep.Version, ID: ep.ID, Host: ep.Host, Addr: ep.Addr, Port: ep.Port,
		Healthy: ep.Healthy, Source: ep.Source, Meta: meta, Registered: ep.Registered.UTC().Format("2006-01-02T15:04:05Z07:00"),
	}
}

func printEndpoints(e *env, eps []discovery.Endpoint) error {
	out := make([]endpointOut, len(eps))
	for i, ep := range eps {
		out[i] = newEndpointOut(ep)
	}
	return e.print(out, func(w io.Writer) {
		fmt.Fprintln(w, "SERVICE\tVERSION\tID\tADDRESS\tHEALTHY\tSOURCE\tHOST")
		for _, o := range out {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%t\t%s\t%s\n", o.Service, dash(o.Version), o.ID, hostPort(o.Addr, o.Port), o.Healthy, o.Source, dash(o.Host))
		}
	})
}

func hostPort(addr string, port int) string {
	if port == 0 {
		return addr
	}
	return net.JoinHostPort(addr, strconv.Itoa(port))
}

// lookupEventOut is the CLI's JSON form of a watch event.
type lookupEventOut struct {
	Revision int64       `json:"revision"`
	Type     string      `json:"type"`
	Endpoint endpointOut `json:"endpoint"`
	Error    string      `json:"error,omitempty"`
}

// lookupWatcher prints the events a lookup's filters select. With
// --healthy, an endpoint turning unhealthy is printed as freed, and
// turning healthy again as registered.
type lookupWatcher struct {
	out     io.Writer
	json    bool
	match   discovery.VersionMatcher
	healthy bool
	live    map[string]bool // ids printed as registered and not yet freed
}

func (w *lookupWatcher) handle(ev discovery.Event) error {
	typ := ev.Type
	id := ev.Endpoint.ID
	switch {
	case ev.Err != nil:
		return w.print(lookupEventOut{Revision: ev.Revision, Type: "error", Endpoint: newEndpointOut(ev.Endpoint), Error: ev.Err.Error()})
	case !w.match.Match(ev.Endpoint.Version):
		return nil
	case typ == discovery.EventRegister && w.healthy && !ev.Endpoint.Healthy:
		if !w.live[id] {
			return nil
		}
		typ = discovery.EventFree
	case typ == discovery.EventFree && !w.live[id]:
		return nil
	}
	if typ == discovery.EventFree {
		delete(w.live, id)
	} else {
		w.live[id] = true
	}
	return w.print(lookupEventOut{Revision: ev.Revision, Type: string(typ), Endpoint: newEndpointOut(ev.Endpoint)})
}

func (w *lookupWatcher) print(o lookupEventOut) error {
	line := fmt.Sprintf("%d %s %s id=%s version=%s addr=%s healthy=%t", o.Revision, o.Type, o.Endpoint.Service,
		o.Endpoint.ID, dash(o.Endpoint.Version), hostPort(o.Endpoint.Addr, o.Endpoint.Port), o.Endpoint.Healthy)
	if o.Error != "" {
		line += fmt.Sprintf(" error=%q", o.Error)
	}
	return eventPrinter{w: w.out, json: w.json}.print(o, line)
}
