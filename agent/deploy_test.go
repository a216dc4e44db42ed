package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// capacityWatch follows every instance change of app through the
// registry's events and checks, at each revision, that at least min
// instances run, and at each scale change that the desired counts of app
// (read then) add up to no more than most: the rollout's bounds, at every
// step rather than at samples.
type capacityWatch struct {
	states               map[string]registry.InstanceState
	minRun, maxRun       int
	min, most, maxWanted int
	failures             []string
	done                 chan struct{}
}

// watchCapacity starts following app from now; stop it with wait.
func (f *fixture) watchCapacity(t *testing.T, ctx context.Context, app string, lo, hi int) (*capacityWatch, func() *capacityWatch) {
	t.Helper()
	rev, err := f.reg.CurrentRevision(f.ctx)
	must(t, err)
	insts, err := f.reg.AppInstances(f.ctx, app)
	must(t, err)
	w := &capacityWatch{states: map[string]registry.InstanceState{}, min: lo, most: hi, minRun: 1 << 30, done: make(chan struct{})}
	for _, in := range insts {
		w.states[in.ID] = in.State
	}
	wctx, cancel := context.WithCancel(ctx)
	events := f.reg.WatchEvents(wctx, rev+1)
	go func() {
		defer close(w.done)
		last := rev
		for ev := range events {
			if ev.Err != nil || ev.App != app {
				continue
			}
			if ev.Type == registry.ScaleChanged {
				w.checkScales(wctx, f.reg, app)
			}
			if ev.Type != registry.InstanceChanged && ev.Type != registry.InstanceDeleted {
				continue
			}
			if ev.Revision != last {
				w.check(last)
				last = ev.Revision
			}
			if ev.Deleted {
				delete(w.states, ev.Instance)
			} else {
				w.states[ev.Instance] = ev.State
			}
		}
		w.check(last)
	}()
	return w, func() *capacityWatch { cancel(); <-w.done; return w }
}

func (w *capacityWatch) check(rev int64) {
	run := 0
	for _, st := range w.states {
		if st == registry.InstanceRunning {
			run++
		}
	}
	w.minRun, w.maxRun = min(w.minRun, run), max(w.maxRun, run)
	if run < w.min {
		w.failures = append(w.failures, fmt.Sprintf("revision %d: %d running, fewer than %d", rev, run, w.min))
	}
}

func (w *capacityWatch) checkScales(ctx context.Context, reg *registry.Registry, app string) {
	scales, err := reg.Scales(ctx, app)
	if err != nil {
		return // the watch is ending
	}
	n := 0
	for _, s := range scales {
		n += s.Desired
	}
	w.maxWanted = max(w.maxWanted, n)
	if n > w.most {
		w.failures = append(w.failures, fmt.Sprintf("desired counts %v add up to %d, more than %d", scales, n, w.most))
	}
}

// revCounts counts app's live instances per revision and its running ones.
func (f *fixture) revCounts(t *testing.T, app string) (live map[string]int, run map[string]int) {
	t.Helper()
	insts, err := f.reg.AppInstances(f.ctx, app)
	must(t, err)
	live, run = map[string]int{}, map[string]int{}
	for _, in := range insts {
		if in.State.Live() {
			live[in.Rev]++
		}
		if in.State == registry.InstanceRunning {
			run[in.Rev]++
		}
	}
	return live, run
}

// waitDeploy waits until the deployment of app ends and returns it.
func (f *fixture) waitDeploy(t *testing.T, app, id string) registry.Deployment {
	t.Helper()
	var d registry.Deployment
	proctest.WaitFor(t, 3*time.Minute, "deployment "+id+" ended", func() bool {
		var err error
		d, err = f.reg.Deployment(f.ctx, app)
		must(t, err)
		return d.ID == id && d.State.Terminal()
	})
	return d
}

// TestDeployRollsAndReverts rolls 6 instances from v1 to v2 with max
// parallel 2 on two real agents, driven by the elected reconciler, and
// checks at every registry revision that at least 4 instances run and at
// most 8 are live; it ends with 6 v2 and no v1. Then v3, whose directory
// does not exist, fails once both hosts failed to start an instance (long
// before its healthy deadline of 5 minutes) and auto-revert brings v2 back the same way, again never below 4 running.
func TestDeployRollsAndReverts(t *testing.T) {
	f := newFixture(t)
	fast := func(c *Config) { c.StopOnExit = true; c.ReconcileInterval = time.Second }
	f.startAgent(t, "host-a", t.TempDir(), fast)
	f.startAgent(t, "host-b", t.TempDir(), fast)
	_, err := f.reg.RegisterRevision(f.ctx, registry.Revision{App: "demo", Name: "v2", Dir: os.TempDir()})
	must(t, err)
	_, err = f.reg.RegisterRevision(f.ctx, registry.Revision{App: "demo", Name: "v3", Dir: filepath.Join(t.TempDir(), "missing")})
	must(t, err)
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 6)
	must(t, err)
	f.waitRunning(t, "demo", 6)

	minHealthy := registry.Duration(300 * time.Millisecond)
	w, stop := f.watchCapacity(t, f.ctx, "demo", 4, 8)
	d, err := f.reg.CreateDeployment(f.ctx, registry.DeployRequest{App: "demo", Rev: "v2", By: "test",
		Override: &registry.Strategy{MaxParallel: 2, MinHealthy: &minHealthy}})
	must(t, err)
	end := f.waitDeploy(t, "demo", d.ID)
	if end.State != registry.DeploySucceeded {
		t.Fatalf("deployment ended %s: %s", end.State, end.Reason)
	}
	proctest.WaitFor(t, time.Minute, "6 v2 running, no v1 left", func() bool {
		live, run := f.revCounts(t, "demo")
		return run["v2"] == 6 && live["v1"] == 0 && live["v2"] == 6
	})
	w = stop()
	for _, msg := range w.failures {
		t.Error(msg)
	}
	t.Logf("v1 -> v2: running between %d and %d, at most %d desired", w.minRun, w.maxRun, w.maxWanted)
	if p := end.Procs[0]; p.Healthy != 6 || p.OldLeft != 0 || p.Settled != 6 || p.Count != 6 {
		t.Errorf("final progress %+v", p)
	}

	// v3 never starts: once every host failed it, auto-revert brings v2
	// back.
	w, stop = f.watchCapacity(t, f.ctx, "demo", 4, 8)
	d3, err := f.reg.CreateDeployment(f.ctx, registry.DeployRequest{App: "demo", Rev: "v3", By: "test",
		Override: &registry.Strategy{MaxParallel: 2, MinHealthy: &minHealthy, AutoRevert: true}})
	must(t, err)
	end = f.waitDeploy(t, "demo", d3.ID)
	if end.State != registry.DeployReverted {
		t.Fatalf("v3 deployment ended %s: %s", end.State, end.Reason)
	}
	if !strings.Contains(end.Reason, "could not start on any live host") || !strings.Contains(end.Reason, "instance demo-web-") {
		t.Errorf("reason %q does not name the instance and its cause", end.Reason)
	}
	proctest.WaitFor(t, time.Minute, "6 v2 running, no v3 left", func() bool {
		live, run := f.revCounts(t, "demo")
		return run["v2"] == 6 && live["v3"] == 0 && live["v2"] == 6
	})
	w = stop()
	for _, msg := range w.failures {
		t.Error(msg)
	}
	hist, err := f.reg.Deployments(f.ctx, "demo")
	must(t, err)
	if len(hist) != 2 || hist[0].State != registry.DeploySucceeded || hist[1].State != registry.DeployReverted {
		t.Fatalf("history %+v", hist)
	}
}

// TestDeploySurvivesAgentRestart stops both agents (the leader among
// them) in the middle of a rollout, their instances running on, and
// starts them again: the new leader continues the deployment from the
// registry to 4 v2 instances and no v1, every instance of the rollout
// started once (the restarted agents re-adopt, nothing is doubled).
func TestDeploySurvivesAgentRestart(t *testing.T) {
	f := newFixture(t)
	cfg := func(c *Config) { c.ReconcileInterval = time.Second }
	dirA, dirB := t.TempDir(), t.TempDir()
	a := f.startAgent(t, "host-a", dirA, cfg)
	b := f.startAgent(t, "host-b", dirB, cfg)
	_, err := f.reg.RegisterRevision(f.ctx, registry.Revision{App: "demo", Name: "v2", Dir: os.TempDir()})
	must(t, err)
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 4)
	must(t, err)
	f.waitRunning(t, "demo", 4)

	minHealthy := registry.Duration(time.Second)
	d, err := f.reg.CreateDeployment(f.ctx, registry.DeployRequest{App: "demo", Rev: "v2",
		Override: &registry.Strategy{MaxParallel: 1, MinHealthy: &minHealthy}})
	must(t, err)
	proctest.WaitFor(t, time.Minute, "the rollout under way", func() bool {
		cur, err := f.reg.Deployment(f.ctx, "demo")
		must(t, err)
		return cur.Procs[0].Placed >= 1
	})
	a.stop(t)
	b.stop(t)
	mid, err := f.reg.Deployment(f.ctx, "demo")
	must(t, err)
	if mid.State.Terminal() {
		t.Fatalf("the deployment ended (%s) before the agents were restarted; nothing tested", mid.State)
	}
	t.Logf("agents stopped at v2 placed %d, v1 left %d", mid.Procs[0].Placed, mid.Procs[0].OldLeft)
	stopOnExit := func(c *Config) { cfg(c); c.StopOnExit = true }
	f.startAgent(t, "host-a", dirA, stopOnExit)
	f.startAgent(t, "host-b", dirB, stopOnExit)
	end := f.waitDeploy(t, "demo", d.ID)
	if end.State != registry.DeploySucceeded {
		t.Fatalf("deployment ended %s: %s", end.State, end.Reason)
	}
	proctest.WaitFor(t, time.Minute, "4 v2 running, no v1 left", func() bool {
		live, run := f.revCounts(t, "demo")
		return run["v2"] == 4 && live["v1"] == 0 && live["v2"] == 4
	})
	insts, err := f.reg.AppInstances(f.ctx, "demo")
	must(t, err)
	v2 := 0
	for _, in := range insts {
		if in.Rev == "v2" {
			v2++
			if n := in.Restarts["fail"]; n != 0 {
				t.Errorf("v2 instance %s restarted %d times", in.ID, n)
			}
		}
	}
	if v2 != 4 {
		t.Errorf("%d v2 instance records, want the 4 the rollout started (none doubled or replaced)", v2)
	}
}
