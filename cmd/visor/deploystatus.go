package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/visorhq/visor/registry"
)

// deployOut is the CLI's JSON form of a deployment: the record, and per
// process type the instances of the old and new revisions as the
// registry has them now.
type deployOut struct {
	App      string          `json:"app"`
	ID       string          `json:"id"`
	Rev      string          `json:"rev"`
	From     []string        `json:"from"`
	State    string          `json:"state"`
	Reason   string          `json:"reason,omitempty"`
	RevertOf string          `json:"revert_of,omitempty"`
	By       string          `json:"by,omitempty"`
	Created  time.Time       `json:"created"`
	Updated  time.Time       `json:"updated"`
	Procs    []deployProcOut `json:"procs"`
}

// deployProcOut is one process type of a deployment. Old and New count
// the instances in the registry; Progress is what the deployment's
// driver recorded (new instances healthy for min-healthy, etc.).
type deployProcOut struct {
	Proc     string         `json:"proc"`
	Count    int            `json:"count"`
	From     map[string]int `json:"from"`
	Strategy strategyOut    `json:"strategy"`
	Old      instCounts     `json:"old"`
	New      instCounts     `json:"new"`
	Progress progressOut    `json:"progress"`
}

// instCounts counts the instances of one side of a deployment: Desired is
// the scale of its revision(s), Placed the instances on a host (claimed,
// starting, running, backoff), Healthy those running (past their health
// check), Unhealthy those in backoff or failed.
type instCounts struct {
	Desired   int `json:"desired"`
	Placed    int `json:"placed"`
	Healthy   int `json:"healthy"`
	Unhealthy int `json:"unhealthy"`
}

type progressOut struct {
	Placed    int  `json:"placed"`
	Healthy   int  `json:"healthy"`
	Unhealthy int  `json:"unhealthy"`
	OldLeft   int  `json:"old_left"`
	Promoted  bool `json:"promoted"`
}

type strategyOut struct {
	MaxParallel      int    `json:"max_parallel"`
	MinHealthy       string `json:"min_healthy"`
	HealthyDeadline  string `json:"healthy_deadline"`
	ProgressDeadline string `json:"progress_deadline"`
	Canary           int    `json:"canary"`
	AutoRevert       bool   `json:"auto_revert"`
	AutoPromote      bool   `json:"auto_promote"`
}

func newStrategyOut(s registry.Strategy) strategyOut {
	return strategyOut{
		MaxParallel: s.MaxParallel, MinHealthy: s.MinHealthyTime().String(), HealthyDeadline: s.HealthyDeadline.String(),
		ProgressDeadline: s.ProgressDeadline.String(), Canary: s.Canary, AutoRevert: s.AutoRevert, AutoPromote: s.AutoPromote,
	}
}

// newDeployOut is d as the CLI shows it, with the instances and scale of
// its app (either may be nil: then only the record's numbers show).
func newDeployOut(d registry.Deployment, insts []registry.Instance, scales []registry.ScaleEntry) deployOut {
	out := deployOut{
		App: d.App, ID: d.ID, Rev: d.Rev, State: string(d.State), Reason: d.Reason, RevertOf: d.RevertOf,
		By: d.By, Created: d.Created, Updated: d.Updated, Procs: make([]deployProcOut, 0, len(d.Procs)),
		From: []string{},
	}
	from := map[string]bool{}
	for _, p := range d.Procs {
		po := deployProcOut{
			Proc: p.Proc, Count: p.Count, From: p.From, Strategy: newStrategyOut(p.Strategy),
			Progress: progressOut{Placed: p.Placed, Healthy: p.Healthy, Unhealthy: p.Unhealthy, OldLeft: p.OldLeft, Promoted: p.Promoted},
		}
		if po.From == nil {
			po.From = map[string]int{}
		}
		for rev := range p.From {
			if rev != d.Rev {
				from[rev] = true
			}
		}
		for _, s := range scales {
			if s.Proc == p.Proc {
				po.side(d.Rev, s.Rev).Desired += s.Desired
			}
		}
		for _, in := range insts {
			if in.Proc == p.Proc {
				po.side(d.Rev, in.Rev).add(in.State)
			}
		}
		out.Procs = append(out.Procs, po)
	}
	out.From = sortedKeys(from)
	return out
}

// side returns the counts of rev: New for the deployment's revision, Old
// for any other.
func (p *deployProcOut) side(newRev, rev string) *instCounts {
	if rev == newRev {
		return &p.New
	}
	return &p.Old
}

func (c *instCounts) add(st registry.InstanceState) {
	switch st {
	case registry.InstanceRunning:
		c.Placed++
		c.Healthy++
	case registry.InstanceClaimed, registry.InstanceStarting:
		c.Placed++
	case registry.InstanceBackoff:
		c.Placed++
		c.Unhealthy++
	case registry.InstanceFailed:
		c.Unhealthy++
	}
}

// readDeployOut reads app's current deployment (the active one, else the
// latest) with its app's instances and scale.
func readDeployOut(ctx context.Context, e *env, r *registry.Registry, app string) (deployOut, registry.Deployment, error) {
	d, err := r.Deployment(ctx, app)
	if err != nil {
		return deployOut{}, d, fmt.Errorf("deployment of app %q: %w", app, err)
	}
	insts, err := r.AppInstances(ctx, app)
	if err := e.skipped(err); err != nil {
		return deployOut{}, d, fmt.Errorf("deployment of app %q: instances: %w", app, err)
	}
	scales, err := r.Scales(ctx, app)
	if err := e.skipped(err); err != nil {
		return deployOut{}, d, fmt.Errorf("deployment of app %q: scale: %w", app, err)
	}
	return newDeployOut(d, insts, scales), d, nil
}

// stateText is a deployment state as the text output shows it.
func stateText(s string) string { return strings.ReplaceAll(s, "_", " ") }

// writeDeployStatus writes the text form of d; bar adds a progress bar
// per process type (on a terminal).
func writeDeployStatus(w io.Writer, d deployOut, bar bool) {
	fmt.Fprintf(w, "Deployment:\t%s\n", d.ID)
	fmt.Fprintf(w, "App:\t%s\n", d.App)
	fmt.Fprintf(w, "Revision:\t%s -> %s\n", dash(strings.Join(d.From, ",")), d.Rev)
	state := stateText(d.State)
	if d.Reason != "" {
		state += " (" + d.Reason + ")"
	}
	fmt.Fprintf(w, "State:\t%s\n", state)
	if d.RevertOf != "" {
		fmt.Fprintf(w, "Reverts:\t%s\n", d.RevertOf)
	}
	fmt.Fprintf(w, "By:\t%s, %s ago (updated %s ago)\n", dash(d.By), ago(d.Created), ago(d.Updated))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "PROC\tCOUNT\tOLD DESIRED\tOLD PLACED\tOLD HEALTHY\tOLD UNHEALTHY\tNEW DESIRED\tNEW PLACED\tNEW HEALTHY\tNEW UNHEALTHY\tPROGRESS")
	for _, p := range d.Procs {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", p.Proc, p.Count,
			p.Old.Desired, p.Old.Placed, p.Old.Healthy, p.Old.Unhealthy,
			p.New.Desired, p.New.Placed, p.New.Healthy, p.New.Unhealthy, progressText(p, bar))
	}
}

// progressText is "8/12 healthy" (new instances healthy for min-healthy,
// of the count), behind a bar of 20 cells when bar is set.
func progressText(p deployProcOut, bar bool) string {
	text := fmt.Sprintf("%d/%d healthy", p.Progress.Healthy, p.Count)
	if !bar {
		return text
	}
	return progressBar(p.Progress.Healthy, p.Count, 20) + " " + text
}

// progressBar draws done of total as width cells: "[#####-----]".
func progressBar(done, total, width int) string {
	filled := width
	if total > 0 {
		filled = min(width, max(0, done*width/total))
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat("-", width-filled) + "]"
}

// historyOut is one line of `visor deploys`.
type historyOut struct {
	ID       string    `json:"id"`
	From     []string  `json:"from"`
	Rev      string    `json:"rev"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	RevertOf string    `json:"revert_of,omitempty"`
	By       string    `json:"by"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

func newHistoryOut(d registry.Deployment) historyOut {
	o := newDeployOut(d, nil, nil)
	return historyOut{ID: o.ID, From: o.From, Rev: o.Rev, State: o.State, Reason: o.Reason, RevertOf: o.RevertOf,
		By: o.By, Created: o.Created, Updated: o.Updated}
}

func writeHistory(w io.Writer, hs []historyOut) {
	fmt.Fprintln(w, "ID\tCREATED\tBY\tFROM\tTO\tOUTCOME")
	for _, h := range hs {
		outcome := stateText(h.State)
		if h.RevertOf != "" {
			outcome += ", reverts " + h.RevertOf
		}
		if h.Reason != "" {
			outcome += ": " + h.Reason
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", h.ID, h.Created.UTC().Format(time.RFC3339), dash(h.By),
			dash(strings.Join(h.From, ",")), h.Rev, outcome)
	}
}

// sortHistory orders deployments oldest first (IDs sort by creation).
func sortHistory(ds []registry.Deployment) {
	sort.SliceStable(ds, func(i, j int) bool {
		if !ds[i].Created.Equal(ds[j].Created) {
			return ds[i].Created.Before(ds[j].Created)
		}
		return ds[i].ID < ds[j].ID
	})
}
