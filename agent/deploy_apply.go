package agent

import (
	"context"
	"errors"
	"time"

	"github.com/visorhq/visor/registry"
)

// planDeploys plans the next step of every active deployment in s; the
// next pass is due when the clock alone changes one.
func (p *plan) planDeploys(s snapshot) {
	if !s.deploysOK || !s.scalesOK {
		return
	}
	for _, d := range s.deploys {
		dp := planDeploy(d, s.scales, s.instances, s.statuses, s.now)
		if dp.next > 0 {
			p.next = min(p.next, dp.next+10*time.Millisecond)
		}
		if dp.change != nil {
			p.deploys = append(p.deploys, dp)
		}
	}
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
