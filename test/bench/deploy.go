package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/registry"
)

// DeployResult compares a rolling deployment of N instances with a
// scale-up of N fresh instances measured in the same run, on the same
// agents (issue 18).
type DeployResult struct {
	N           int `json:"n"`
	MaxParallel int `json:"max_parallel"`
	// MinHealthySeconds is the deployment's min-healthy (0: a new
	// instance counts once it runs).
	MinHealthySeconds float64 `json:"min_healthy_seconds"`
	// ScaleUpSeconds is the time from the Scale call to N running, fresh.
	ScaleUpSeconds float64 `json:"scale_up_seconds"`
	// DeploySeconds is the time from CreateDeployment to the deployment
	// succeeded with N new instances running and no old one left.
	DeploySeconds float64 `json:"deploy_seconds"`
	// RatioToScaleUp is DeploySeconds / ScaleUpSeconds.
	RatioToScaleUp float64 `json:"ratio_to_scale_up"`
	// EtcdWritesPerReplaced counts the etcd revisions (write
	// transactions) from CreateDeployment until every ticket is done,
	// per instance replaced: the new instance's start, the old one's
	// stop, and the deployment's own steps.
	EtcdWritesPerReplaced float64 `json:"etcd_writes_per_replaced_instance"`
	// KeyChangesPerReplaced counts the keys those writes changed.
	KeyChangesPerReplaced float64 `json:"key_changes_per_replaced_instance"`
	// DeploymentWrites counts the writes of the deployment record (its
	// steps and progress) per replaced instance.
	DeploymentWritesPerReplaced float64 `json:"deployment_record_writes_per_replaced_instance"`
}

// benchDeploy scales bench/v1 to n fresh instances (timed), then deploys
// bench/v2 with max-parallel maxPar and min-healthy 0 (timed, with its
// etcd writes counted), then scales v2 back to 0.
func benchDeploy(ctx context.Context, reg *registry.Registry, cli *clientv3.Client, n, maxPar int, scale func() (Result, error)) (*DeployResult, error) {
	res := &DeployResult{N: n, MaxParallel: maxPar}
	up, err := scale()
	if err != nil {
		return nil, err
	}
	res.ScaleUpSeconds = up.SecondsToAllRunning
	rev0, err := reg.CurrentRevision(ctx)
	if err != nil {
		return nil, err
	}
	zero := registry.Duration(0)
	t0 := time.Now()
	d, err := reg.CreateDeployment(ctx, registry.DeployRequest{App: "bench", Rev: "v2", By: "bench",
		Override: &registry.Strategy{MaxParallel: maxPar, MinHealthy: &zero}})
	if err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	var last registry.Deployment
	err = waitFor(ctx, 10*time.Minute, func() bool {
		cur, err := reg.Deployment(ctx, "bench")
		if err != nil || cur.ID != d.ID {
			return false
		}
		last = cur
		return cur.State.Terminal() && countRunning(ctx, reg) == n
	})
	if err != nil {
		return nil, fmt.Errorf("deploy: %w (state %s %s)", err, last.State, last.Reason)
	}
	res.DeploySeconds = time.Since(t0).Seconds()
	if last.State != registry.DeploySucceeded {
		return nil, fmt.Errorf("deploy: %s: %s", last.State, last.Reason)
	}
	res.RatioToScaleUp = res.DeploySeconds / res.ScaleUpSeconds
	_ = waitFor(ctx, 30*time.Second, func() bool {
		ts, err := reg.Tickets(ctx)
		return err == nil && len(ts) == 0
	})
	rev1, err := reg.CurrentRevision(ctx)
	if err != nil {
		return nil, err
	}
	res.EtcdWritesPerReplaced = float64(rev1-rev0) / float64(n)
	keys, records, err := deployKeyChanges(ctx, cli, "/visor/", rev0+1, rev1)
	if err != nil {
		return nil, err
	}
	res.KeyChangesPerReplaced = float64(keys) / float64(n)
	res.DeploymentWritesPerReplaced = float64(records) / float64(n)
	if _, err := reg.Scale(ctx, "bench", "v2", "sleep", 0); err != nil {
		return nil, err
	}
	return res, waitFor(ctx, 5*time.Minute, func() bool { return countRunning(ctx, reg) == 0 })
}

// deployKeyChanges counts the key changes in revisions from..to and, of
// them, the writes of deployment records (deploys/...).
func deployKeyChanges(ctx context.Context, cli *clientv3.Client, prefix string, from, to int64) (total, records int, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if err := wr.Err(); err != nil {
			return total, records, err
		}
		for _, ev := range wr.Events {
			if ev.Kv.ModRevision > to {
				return total, records, nil
			}
			total++
			k := strings.TrimPrefix(string(ev.Kv.Key), prefix)
			if strings.HasPrefix(k, "deploys/") || strings.HasPrefix(k, "deploying/") {
				records++
			}
		}
		if n := len(wr.Events); n > 0 && wr.Events[n-1].Kv.ModRevision >= to {
			return total, records, nil
		}
	}
	return total, records, ctx.Err()
}
