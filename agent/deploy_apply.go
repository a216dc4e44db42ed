package agent

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/visorhq/visor/registry"
)

// planDeploys plans the next step of every active deployment in s; the
// next pass is due when the clock alone changes one.
func (p *plan) planDeploys(s snapshot) {
	if !s.deploysOK || !s.scalesOK {
		return
	}
	in := deployInput{scales: s.scales, insts: s.instances, short: s.statuses, unstartable: unstartable(s)}
	for _, d := range s.deploys {
		dp := planDeploy(d, in, s.now)
		if dp.next > 0 {
			p.next = min(p.next, dp.next+10*time.Millisecond)
		}
		if dp.change != nil {
			p.deploys = append(p.deploys, dp)
		}
	}
}

// unstartable returns the instances of the start tickets in s that every
// live host has failed (so none will try again), with the last reason.
func unstartable(s snapshot) map[string]string {
	out := map[string]string{}
	if !s.ticketsOK || len(s.hosts) == 0 {
		return out
	}
	for _, t := range s.tickets {
		if t.Op != registry.TicketStart || t.Holder != "" || len(t.FailedHosts) == 0 {
			continue
		}
		all := true
		for _, h := range s.hosts {
			all = all && slices.Contains(t.FailedHosts, h.ID)
		}
		if all {
			out[t.Instance] = ""
			if n := len(t.Reasons); n > 0 {
				out[t.Instance] = t.Reasons[n-1]
			}
		}
	}
	return out
}

// applyDeploys writes each planned deployment step with
// registry.DeployStep. A step refused as stale (the record or a scale
// changed since the snapshot: an operator, a Scale, another leader) is
// dropped: the change's event brings a pass that plans again.
func (r *reconciler) applyDeploys(ctx context.Context, plans []deployPlan) {
	for _, dp := range plans {
		c := dp.change
		got, err := r.reg.DeployStep(ctx, dp.d, *c)
		switch {
		case errors.Is(err, registry.ErrStale):
			r.log.Debug("deployment step planned on an older read; planning again", "app", dp.d.App,
				"deployment", dp.d.ID, "error", err)
			continue
		case err != nil:
			r.log.Warn("deployment step", "app", dp.d.App, "deployment", dp.d.ID, "error", err)
			continue
		}
		for _, sc := range c.Scales {
			r.log.Info("deployment: scale", "app", dp.d.App, "deployment", dp.d.ID, "rev", sc.Rev, "proc", sc.Proc,
				"from", sc.From, "to", sc.To)
		}
		if got.State != dp.d.State {
			r.log.Info("deployment: state", "app", dp.d.App, "deployment", dp.d.ID, "rev", dp.d.Rev,
				"from", string(dp.d.State), "to", string(got.State), "reason", got.Reason)
		}
	}
}
