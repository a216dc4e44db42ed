package agent

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/visorhq/visor/registry"
)

// deployReader is what deployCollector reads from the registry
// (*registry.Registry).
type deployReader interface {
	Apps(ctx context.Context) ([]registry.App, error)
	Deployments(ctx context.Context, app string) ([]registry.Deployment, error)
	Instances(ctx context.Context) ([]registry.Instance, error)
}

// deployStates are the states visor_deployments always reports (0 when
// none is in it), so a dashboard's series do not come and go.
var deployStates = []registry.DeployState{
	registry.DeployRunning, registry.DeployAwaitingPromotion, registry.DeployPaused, registry.DeploySucceeded,
	registry.DeployFailed, registry.DeployReverting, registry.DeployReverted, registry.DeployCancelled,
}

var (
	deploymentsDesc = prometheus.NewDesc("visor_deployments",
		"Deployments recorded in the registry (every app's history), by state. Exported by the elected reconciler only.",
		[]string{"state"}, nil)
	revisionRunningDesc = prometheus.NewDesc("visor_revision_instances_running",
		"Instances running (past their health check) in the fleet, per app, revision and process type. Exported by the elected reconciler only.",
		[]string{"app", "rev", "proc"}, nil)
)

// deployCollector exports the fleet's deployments and running instances
// per revision, read from the registry at scrape time. Only the elected
// reconciler exports them (leading reports whether this agent is it), so
// a sum over every agent's /metrics counts each once.
type deployCollector struct {
	reg     deployReader
	leading func() bool
	timeout time.Duration
}

func newDeployCollector(reg deployReader, leader prometheus.Gauge) *deployCollector {
	return &deployCollector{reg: reg, timeout: 5 * time.Second, leading: func() bool {
		var m dto.Metric
		return leader.Write(&m) == nil && m.GetGauge().GetValue() == 1
	}}
}

func (c *deployCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- deploymentsDesc
	ch <- revisionRunningDesc
}

// Collect reads the registry; a read that fails leaves its metric out of
// this scrape (an error metric would fail the whole scrape).
func (c *deployCollector) Collect(ch chan<- prometheus.Metric) {
	if !c.leading() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	if byState, err := c.deployments(ctx); err == nil {
		for _, s := range deployStates {
			ch <- prometheus.MustNewConstMetric(deploymentsDesc, prometheus.GaugeValue, float64(byState[s]), string(s))
		}
	}
	insts, err := c.reg.Instances(ctx)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return
	}
	type key struct{ app, rev, proc string }
	running := map[key]int{}
	for _, in := range insts {
		if in.State == registry.InstanceRunning {
			running[key{in.App, in.Rev, in.Proc}]++
		}
	}
	for k, n := range running {
		ch <- prometheus.MustNewConstMetric(revisionRunningDesc, prometheus.GaugeValue, float64(n), k.app, k.rev, k.proc)
	}
}

func (c *deployCollector) deployments(ctx context.Context) (map[registry.DeployState]int, error) {
	apps, err := c.reg.Apps(ctx)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return nil, err
	}
	byState := map[registry.DeployState]int{}
	for _, a := range apps {
		ds, err := c.reg.Deployments(ctx, a.Name)
		if err != nil && !errors.Is(err, registry.ErrCorrupt) {
			return nil, err
		}
		for _, d := range ds {
			byState[d.State]++
		}
	}
	return byState, nil
}
