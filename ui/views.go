package ui

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/visorhq/visor/registry"
)

// hostRow is one host of the overview.
type hostRow struct {
	registry.Host
	Instances int
}

// scaleRow is one app/rev/proc: desired against what runs.
type scaleRow struct {
	App, Rev, Proc string
	Desired        int
	// Running are running instances; Starting the other live ones
	// (pending, claimed, starting); Backoff, Failed and Lost as named.
	Running, Starting, Backoff, Failed, Lost int
}

// Short reports whether fewer run than are desired.
func (s scaleRow) Short() bool { return s.Running < s.Desired }

// counts are instance counts by what an operator cares about.
type counts = registry.InstanceCounts

// overviewData is the fleet overview.
type overviewData struct {
	Hosts  []hostRow
	Scales []scaleRow
	Counts counts
	Apps   int
	Bad    string // records skipped as corrupt, if any
	Pics   pictures
}

// readFleet reads the hosts, apps, scales and instances. Corrupt records
// are skipped and named in bad; any other error fails the read.
func (h *Handler) readFleet(ctx context.Context) (overviewData, error) {
	var d overviewData
	var bad []string
	keep := func(err error) error {
		if err != nil && errors.Is(err, registry.ErrCorrupt) {
			bad = append(bad, err.Error())
			return nil
		}
		return err
	}
	reg := h.cfg.Registry
	hosts, err := reg.Hosts(ctx)
	if err = keep(err); err != nil {
		return d, err
	}
	insts, err := reg.Instances(ctx)
	if err = keep(err); err != nil {
		return d, err
	}
	apps, err := reg.Apps(ctx)
	if err = keep(err); err != nil {
		return d, err
	}
	var entries []registry.ScaleEntry
	for _, a := range apps {
		es, err := reg.Scales(ctx, a.Name)
		if err = keep(err); err != nil {
			return d, err
		}
		entries = append(entries, es...)
	}
	d = fleetData(hosts, insts, len(apps), entries)
	d.Bad = strings.Join(bad, "; ")
	return d, nil
}

// fleetData joins what readFleet read into the overview.
func fleetData(hosts []registry.Host, insts []registry.Instance, apps int, entries []registry.ScaleEntry) overviewData {
	d := overviewData{Apps: apps, Hosts: hostRows(hosts, insts), Scales: scaleRows(entries, insts)}
	for _, in := range insts {
		d.Counts.Add(in)
	}
	return d
}

func hostRows(hosts []registry.Host, insts []registry.Instance) []hostRow {
	n := map[string]int{}
	for _, in := range insts {
		if in.Host != "" && !in.State.Terminal() {
			n[in.Host]++
		}
	}
	rows := make([]hostRow, 0, len(hosts))
	for _, hst := range hosts {
		rows = append(rows, hostRow{Host: hst, Instances: n[hst.ID]})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	return rows
}

// scaleRows joins the desired counts with the instances; an app/rev/proc
// with instances but no scale entry shows with desired 0.
func scaleRows(entries []registry.ScaleEntry, insts []registry.Instance) []scaleRow {
	idx := map[string]*scaleRow{}
	var keys []string
	row := func(app, rev, proc string) *scaleRow {
		k := app + "/" + rev + "/" + proc
		if r, ok := idx[k]; ok {
			return r
		}
		r := &scaleRow{App: app, Rev: rev, Proc: proc}
		idx[k] = r
		keys = append(keys, k)
		return r
	}
	for _, e := range entries {
		row(e.App, e.Rev, e.Proc).Desired = e.Desired
	}
	for _, in := range insts {
		r := row(in.App, in.Rev, in.Proc)
		var c counts
		c.Add(in)
		r.Running += c.Running
		r.Starting += c.Starting
		r.Backoff += c.Backoff
		r.Failed += c.Failed
		r.Lost += c.Lost
	}
	slices.Sort(keys)
	out := make([]scaleRow, 0, len(keys))
	for _, k := range keys {
		out = append(out, *idx[k])
	}
	return out
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) {
	d, err := h.readFleet(r.Context())
	if err != nil {
		h.registryError(w, r, "fleet", err)
		return
	}
	d.Pics = h.overviewPictures(d.Scales)
	h.render(w, r, http.StatusOK, "overview", "Fleet", d)
}

// appData is the app page.
type appData struct {
	App       registry.App
	Revisions []registry.Revision
	Procs     []registry.ProcType
	EnvKeys   []string
	Scales    []scaleRow
	Instances []registry.Instance
	Pics      pictures
	Deploys   deploysData
}

func (h *Handler) app(w http.ResponseWriter, r *http.Request) {
	ctx, name := r.Context(), r.PathValue("app")
	reg := h.cfg.Registry
	a, err := reg.App(ctx, name)
	if err != nil {
		h.registryError(w, r, fmt.Sprintf("app %q", name), err)
		return
	}
	d := appData{App: a}
	errs := []error{}
	var e1, e2, e3, e4, e5, e6 error
	d.Revisions, e1 = reg.Revisions(ctx, name)
	d.Procs, e2 = reg.ProcTypes(ctx, name)
	env, e3 := reg.Env(ctx, name)
	entries, e4 := reg.Scales(ctx, name)
	d.Instances, e5 = reg.AppInstances(ctx, name)
	d.Deploys, e6 = h.readDeploys(ctx, name)
	for _, e := range []error{e1, e2, e3, e4, e5, e6} {
		if e != nil && !errors.Is(e, registry.ErrCorrupt) {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		h.registryError(w, r, fmt.Sprintf("app %q", name), errors.Join(errs...))
		return
	}
	for k := range env {
		d.EnvKeys = append(d.EnvKeys, k)
	}
	slices.Sort(d.EnvKeys)
	d.Scales = scaleRows(entries, d.Instances)
	sortInstances(d.Instances)
	d.Pics = h.appPictures(name)
	h.render(w, r, http.StatusOK, "app", "App "+name, d)
}

func sortInstances(in []registry.Instance) {
	sort.Slice(in, func(i, j int) bool {
		if t := in[i].State.Terminal(); t != in[j].State.Terminal() {
			return !t
		}
		return in[i].ID < in[j].ID
	})
}

// hostData is the host page.
type hostData struct {
	Host      registry.Host
	Instances []registry.Instance
	Counts    counts
	Pics      pictures
}

func (h *Handler) host(w http.ResponseWriter, r *http.Request) {
	ctx, id := r.Context(), r.PathValue("host")
	hst, err := h.cfg.Registry.Host(ctx, id)
	if err != nil {
		h.registryError(w, r, fmt.Sprintf("live host %q", id), err)
		return
	}
	drains, err := h.cfg.Registry.Drains(ctx) // Host leaves Draining unset
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		h.registryError(w, r, fmt.Sprintf("host %q", id), err)
		return
	}
	_, hst.Draining = drains[id]
	insts, err := h.cfg.Registry.HostInstances(ctx, id)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		h.registryError(w, r, fmt.Sprintf("host %q", id), err)
		return
	}
	d := hostData{Host: hst, Instances: insts, Pics: h.hostPictures(id)}
	for _, in := range insts {
		d.Counts.Add(in)
	}
	sortInstances(d.Instances)
	h.render(w, r, http.StatusOK, "host", "Host "+id, d)
}

// instanceData is the instance page.
type instanceData struct {
	registry.Instance
	// Local reports whether the instance runs on the serving agent's
	// host (its logs and usage are then here).
	Local    bool
	HasUsage bool
	CPU      float64
	RSS      uint64
	// Elsewhere is the dashboard of the agent holding the instance,
	// when it is on another host that serves one.
	Elsewhere string
	Stream    string
	Signals   []string
	// History is the states the instance went through, newest first, as
	// far as the serving agent's history saw (Kept false: none kept).
	History      []Transition
	HistoryKept  bool
	HistorySince time.Time
}

func (h *Handler) instance(w http.ResponseWriter, r *http.Request) {
	ctx, id := r.Context(), r.PathValue("id")
	in, err := h.cfg.Registry.Instance(ctx, id)
	if err != nil {
		h.registryError(w, r, fmt.Sprintf("instance %q", id), err)
		return
	}
	d := instanceData{Instance: in, Stream: "stdout", Signals: signals, History: h.transitions(id)}
	if hs := h.cfg.History; hs != nil {
		d.HistoryKept, d.HistorySince = true, hs.Since()
	}
	if r.URL.Query().Get("stream") == "stderr" {
		d.Stream = "stderr"
	}
	d.Local = in.Host != "" && in.Host == h.cfg.Host && h.cfg.Local != nil
	if d.Local {
		d.CPU, d.RSS, d.HasUsage = h.cfg.Local.Usage(id)
	} else if in.Host != "" {
		if hst, err := h.cfg.Registry.Host(ctx, in.Host); err == nil && hst.APIAddr != "" {
			scheme := hst.APIScheme
			if scheme == "" {
				scheme = "http"
			}
			d.Elsewhere = scheme + "://" + hst.APIAddr + "/ui/instances/" + id
		}
	}
	h.render(w, r, http.StatusOK, "instance", "Instance "+id, d)
}

// signals are the signals the instance page offers.
var signals = []string{"HUP", "USR1", "USR2", "INT", "TERM", "QUIT", "KILL"}

func sinceText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}
