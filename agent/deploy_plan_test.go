package agent

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// The deployment planner tests start no etcd: planDeploy is pure.

var depStart = planNow.Add(-time.Hour)

// strat is a strategy with defaults, max parallel m and min healthy mh.
func strat(m int, mh time.Duration, f func(*registry.Strategy)) registry.Strategy {
	d := registry.Duration(mh)
	s := registry.Strategy{MaxParallel: m, MinHealthy: &d}
	if f != nil {
		f(&s)
	}
	return s.WithDefaults()
}

// dep is a deployment of demo/web from v1 (count instances) to v2,
// created at depStart, progressed a minute ago; f adjusts it.
func dep(count int, s registry.Strategy, f func(*registry.Deployment)) registry.Deployment {
	d := registry.Deployment{App: "demo", ID: "d-1", Rev: "v2", State: registry.DeployRunning,
		Procs: []registry.DeployProc{{Proc: "web", Count: count, From: map[string]int{"v1": count}, Strategy: s,
			Promoted: s.Canary == 0, Excess: count}},
		Created: depStart, PhaseStart: depStart, Progressed: planNow.Add(-time.Minute), ModRevision: 7}
	if f != nil {
		f(&d)
	}
	return d
}

// insts returns n instances of demo/rev/web numbered from first, in state
// st since age ago (and created then).
func insts(rev string, first, n int, st registry.InstanceState, age time.Duration) []registry.Instance {
	var out []registry.Instance
	for i := first; i < first+n; i++ {
		out = append(out, registry.Instance{ID: fmt.Sprintf("demo-web-%s-%02d", rev, i), App: "demo", Rev: rev, Proc: "web",
			Host: "a", State: st, Since: planNow.Add(-age), Created: planNow.Add(-age)})
	}
	return out
}

func one(rev string, i int, st registry.InstanceState, age time.Duration, f func(*registry.Instance)) []registry.Instance {
	in := insts(rev, i, 1, st, age)
	f(&in[0])
	return in
}

func cat(lists ...[]registry.Instance) []registry.Instance { return slices.Concat(lists...) }

func scales(kv ...any) []registry.ScaleEntry {
	var out []registry.ScaleEntry
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, scale("demo", kv[i].(string), "web", kv[i+1].(int)))
	}
	return out
}

// describeScales is a step's scale changes as "v2:0->2".
func describeScales(c *registry.DeployChange) []string {
	if c == nil {
		return nil
	}
	var out []string
	for _, s := range c.Scales {
		out = append(out, fmt.Sprintf("%s:%d->%d", s.Rev, s.From, s.To))
	}
	return out
}

const (
	stRun     = registry.InstanceRunning
	stStart   = registry.InstanceStarting
	stPend    = registry.InstancePending
	stBackoff = registry.InstanceBackoff
)

func TestPlanDeploy(t *testing.T) {
	t.Parallel()
	s2 := strat(2, 10*time.Second, nil)
	s1 := strat(1, 0, nil)
	revert := strat(2, 10*time.Second, func(s *registry.Strategy) { s.AutoRevert = true })
	canary := strat(2, 10*time.Second, func(s *registry.Strategy) { s.Canary = 1 })
	autoCanary := strat(2, 10*time.Second, func(s *registry.Strategy) { s.Canary = 2; s.AutoPromote = true })
	reverting := func(d *registry.Deployment) {
		d.State, d.Reason, d.PhaseStart = registry.DeployReverting, "web: instance x failed", planNow.Add(-time.Minute)
	}
	code1 := 1
	for _, c := range []struct {
		name  string
		short bool // v2's instances wait for room
		// unstartable: instances whose start every live host failed
		unstartable map[string]string
		d           registry.Deployment
		scales      []registry.ScaleEntry
		insts       []registry.Instance
		want        []string // scale changes
		state       registry.DeployState
		reason      string // substring of the new reason
		write       bool   // the record changes (or not) without scale changes
		next        time.Duration
	}{
		{name: "first step starts max-parallel new", d: dep(6, s2, nil), scales: scales("v1", 6),
			insts: insts("v1", 0, 6, stRun, time.Hour), want: []string{"v2:0->2"}, state: registry.DeployRunning},
		{name: "max-parallel 1 starts one", d: dep(6, s1, nil), scales: scales("v1", 6),
			insts: insts("v1", 0, 6, stRun, time.Hour), want: []string{"v2:0->1"}, state: registry.DeployRunning},
		{name: "new ones starting: max-parallel reached, nothing more", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 2, stStart, time.Second)),
			state: registry.DeployRunning, write: true, next: 5*time.Minute - time.Second},
		{name: "min healthy not yet reached: wait for it", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 2, stRun, 4*time.Second)),
			state: registry.DeployRunning, write: true, next: 6 * time.Second},
		{name: "healthy new: stop as many old, start the next", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 2, stRun, 20*time.Second)),
			want:  []string{"v2:2->4", "v1:6->4"}, state: registry.DeployRunning},
		{name: "one of two healthy: one old goes, one new starts", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stRun, 20*time.Second), insts("v2", 1, 1, stRun, time.Second)),
			want:  []string{"v2:2->3", "v1:6->5"}, state: registry.DeployRunning, next: 9 * time.Second},
		{name: "last old ones go", d: dep(6, s2, nil), scales: scales("v1", 2, "v2", 6),
			insts: cat(insts("v1", 0, 2, stRun, time.Hour), insts("v2", 0, 6, stRun, time.Minute)),
			want:  []string{"v1:2->0"}, state: registry.DeployRunning},
		{name: "all new healthy, no old: succeeded", d: dep(6, s2, nil), scales: scales("v1", 0, "v2", 6),
			insts: insts("v2", 0, 6, stRun, time.Minute), state: registry.DeploySucceeded},
		{name: "failed new instance fails it, nothing more stopped", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), one("v2", 0, registry.InstanceFailed, time.Second,
				func(i *registry.Instance) { i.Reason = "start failed 3 times" })),
			state: registry.DeployFailed, reason: "web: instance demo-web-v2-00 of v2 failed: start failed 3 times"},
		{name: "crash-looping new instance", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stRun, time.Minute),
				one("v2", 1, stBackoff, time.Second, func(i *registry.Instance) {
					i.Restarts, i.ExitCode = map[string]int{"fail": 2, "health": 1, "manual": 4}, &code1
				})),
			state: registry.DeployFailed, reason: "demo-web-v2-01 of v2 is crash-looping: 3 restarts, last exit code 1"},
		{name: "two restarts is not yet a crash loop", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), one("v2", 0, stBackoff, time.Second, func(i *registry.Instance) {
				i.Restarts = map[string]int{"fail": 2}
			})),
			state: registry.DeployRunning, want: []string{"v2:1->2"}},
		{name: "failure with auto-revert: reverting", d: dep(6, revert, nil), scales: scales("v1", 4, "v2", 4),
			insts: cat(insts("v1", 0, 4, stRun, time.Hour), insts("v2", 0, 2, stRun, time.Minute),
				one("v2", 2, registry.InstanceExited, time.Second, func(i *registry.Instance) { i.ExitCode = &code1 })),
			state: registry.DeployReverting, reason: "instance demo-web-v2-02 of v2 exited with exit code 1"},
		{name: "healthy deadline passed", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stStart, 6*time.Minute)),
			state: registry.DeployFailed, reason: "not running within the healthy deadline 5m0s (still starting)"},
		{name: "health check failing past the healthy deadline", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), one("v2", 0, stStart, 5*time.Minute, func(i *registry.Instance) {
				i.Health = "http check: connection refused"
			})),
			state: registry.DeployFailed, reason: "(still starting; last health check: http check: connection refused)"},
		{name: "start failed on every live host", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 1),
			unstartable: map[string]string{"demo-web-v2-00": "chdir /srv/v2: no such file or directory"},
			insts:       cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stPend, 10*time.Second)),
			state:       registry.DeployFailed, reason: "demo-web-v2-00 of v2 could not start on any live host: chdir /srv/v2"},
		{name: "pending past the healthy deadline (no host takes it)", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stPend, 5*time.Minute)),
			state: registry.DeployFailed, reason: "(still pending)"},
		{name: "progress deadline passed", d: dep(6, s2, func(d *registry.Deployment) {
			d.Progressed = planNow.Add(-11 * time.Minute)
			d.Procs[0].Excess = 6
		}), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 2, registry.InstanceClaimed, 0)),
			state: registry.DeployFailed, reason: "web: no progress for 11m0s (progress deadline)"},
		{name: "progress just made: deadline starts again", d: dep(6, s2, func(d *registry.Deployment) {
			d.Progressed = planNow.Add(-11 * time.Minute)
			d.Procs[0].Excess = 6
		}), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 2, stRun, time.Minute)),
			want:  []string{"v2:2->4", "v1:6->4"}, state: registry.DeployRunning},
		{name: "canary: one new beside the old", d: dep(6, canary, nil), scales: scales("v1", 6),
			insts: insts("v1", 0, 6, stRun, time.Hour), want: []string{"v2:0->1"}, state: registry.DeployRunning},
		{name: "canary not yet healthy: waits, old untouched", d: dep(6, canary, nil), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stRun, time.Second)),
			state: registry.DeployRunning, write: true, next: 9 * time.Second},
		{name: "canary healthy: awaiting promotion", d: dep(6, canary, nil), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stRun, time.Minute)),
			state: registry.DeployAwaitingPromotion},
		{name: "awaiting promotion does nothing", d: dep(6, canary, func(d *registry.Deployment) {
			d.State, d.Procs[0].Settled, d.Procs[0].Excess = registry.DeployAwaitingPromotion, 7, 0
			d.Procs[0].Placed, d.Procs[0].Healthy, d.Procs[0].OldLeft = 1, 1, 6
		}), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stRun, time.Minute)),
			state: registry.DeployAwaitingPromotion},
		{name: "awaiting promotion: a crashing canary still fails it (rolled back)", d: dep(6, canary, func(d *registry.Deployment) {
			d.State = registry.DeployAwaitingPromotion
		}), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), one("v2", 0, registry.InstanceFailed, time.Second, func(*registry.Instance) {})),
			state: registry.DeployReverting, reason: "failed: no reason given"},
		{name: "auto-promote once canaries are healthy", d: dep(6, autoCanary, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 2, stRun, time.Minute)),
			state: registry.DeployRunning, write: true},
		{name: "promoted canary: the rest follows", d: dep(6, canary, func(d *registry.Deployment) { d.Procs[0].Promoted = true }),
			scales: scales("v1", 6, "v2", 1), insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, stRun, time.Minute)),
			want: []string{"v2:1->3", "v1:6->5"}, state: registry.DeployRunning},
		{name: "paused: nothing", d: dep(6, s2, func(d *registry.Deployment) {
			d.State, d.PausedIn, d.Progressed = registry.DeployPaused, registry.DeployRunning, planNow.Add(-time.Hour)
		}), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), one("v2", 0, registry.InstanceFailed, time.Second, func(*registry.Instance) {})),
			state: registry.DeployPaused},
		{name: "reverting: old revision comes back max-parallel at a time", d: dep(6, revert, reverting), scales: scales("v1", 2, "v2", 4),
			insts: cat(insts("v1", 0, 2, stRun, time.Hour), insts("v2", 0, 4, stRun, time.Hour)),
			want:  []string{"v1:2->4"}, state: registry.DeployReverting},
		{name: "reverting: new ones go once old are healthy", d: dep(6, revert, reverting), scales: scales("v1", 4, "v2", 4),
			insts: cat(insts("v1", 0, 4, stRun, time.Hour), insts("v2", 0, 4, stRun, time.Hour)),
			want:  []string{"v1:4->6", "v2:4->2"}, state: registry.DeployReverting},
		{name: "revert done: reverted", d: dep(6, revert, reverting), scales: scales("v1", 6, "v2", 0),
			insts: insts("v1", 0, 6, stRun, time.Hour), state: registry.DeployReverted, reason: "instance x failed"},
		{name: "revert fails: failed", d: dep(6, revert, reverting), scales: scales("v1", 3, "v2", 4),
			insts: cat(insts("v1", 0, 2, stRun, time.Hour), one("v1", 2, registry.InstanceFailed, time.Second, func(*registry.Instance) {}),
				insts("v2", 0, 4, stRun, time.Hour)),
			state: registry.DeployFailed, reason: "revert failed: web: instance demo-web-v1-02 of v1 failed"},
		{name: "scale during deploy: count raised", d: dep(8, s2, func(d *registry.Deployment) { d.Procs[0].From["v1"] = 6 }),
			scales: scales("v1", 0, "v2", 6), insts: insts("v2", 0, 6, stRun, time.Minute),
			want: []string{"v2:6->8"}, state: registry.DeployRunning},
		{name: "scale during deploy: count lowered", d: dep(4, s2, nil), scales: scales("v1", 0, "v2", 6),
			insts: insts("v2", 0, 6, stRun, time.Minute), want: []string{"v2:6->4"}, state: registry.DeployRunning},
		{name: "lost host: replacements stPend, no old stops until they run", d: dep(6, s2, nil), scales: scales("v1", 2, "v2", 4),
			insts: cat(insts("v1", 0, 2, stRun, time.Hour), insts("v2", 0, 2, stRun, time.Minute),
				insts("v2", 2, 2, registry.InstanceLost, time.Second), insts("v2", 4, 2, stPend, time.Second)),
			state: registry.DeployRunning, write: true, next: 5*time.Minute - time.Second},
		{name: "no room for new: old ones make way, at most max-parallel", short: true, d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: insts("v1", 0, 6, stRun, time.Hour), want: []string{"v1:6->4"}, state: registry.DeployRunning},
		{name: "drained old instance's replacement counts", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 5, stRun, time.Hour), one("v1", 5, stRun, time.Hour, func(i *registry.Instance) { i.ReplacedBy = "demo-web-v1-06" }),
				insts("v1", 6, 1, stStart, time.Second), insts("v2", 0, 2, stRun, time.Minute)),
			want: []string{"v2:2->4", "v1:6->4"}, state: registry.DeployRunning},
		{name: "old revision's failures are not the deployment's", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 2),
			insts: cat(insts("v1", 0, 5, stRun, time.Hour), insts("v1", 5, 1, registry.InstanceFailed, time.Second),
				insts("v2", 0, 2, stRun, time.Minute)),
			want: []string{"v2:2->4", "v1:6->4"}, state: registry.DeployRunning},
		{name: "failures from before the deployment do not count", d: dep(6, s2, func(d *registry.Deployment) { d.PhaseStart = planNow.Add(-time.Minute) }),
			scales: scales("v1", 6), insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, registry.InstanceFailed, time.Hour)),
			want: []string{"v2:0->2"}, state: registry.DeployRunning},
		{name: "a clean exit is not a failure", d: dep(6, s2, nil), scales: scales("v1", 6, "v2", 1),
			insts: cat(insts("v1", 0, 6, stRun, time.Hour), insts("v2", 0, 1, registry.InstanceExited, time.Second)),
			want:  []string{"v2:1->2"}, state: registry.DeployRunning},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := planDeploy(c.d, deployInput{scales: c.scales, insts: c.insts, short: map[string]bool{"demo/v2/web": c.short},
				unstartable: c.unstartable}, planNow)
			if got.d.ModRevision != c.d.ModRevision {
				t.Fatal("plan lost the record as read")
			}
			if sc := describeScales(got.change); !slices.Equal(sc, c.want) {
				t.Fatalf("scales %v, want %v", sc, c.want)
			}
			state := c.d.State
			if got.change != nil {
				state = got.change.Next.State
				if !strings.Contains(got.change.Next.Reason, c.reason) {
					t.Fatalf("reason %q, want %q in it", got.change.Next.Reason, c.reason)
				}
			} else if c.write || c.reason != "" || state != c.state {
				t.Fatalf("no change planned, want state %s reason %q", c.state, c.reason)
			}
			if state != c.state {
				t.Fatalf("state %s, want %s (reason %q)", state, c.state, got.change.Next.Reason)
			}
			if got.change != nil && len(c.want) == 0 && !c.write && state == c.d.State {
				t.Fatalf("an unexpected write: %+v", got.change.Next)
			}
			if c.next != 0 && got.next != c.next {
				t.Fatalf("next %s, want %s", got.next, c.next)
			}
		})
	}
}

// TestPlanDeployProgress checks the progress a step records.
func TestPlanDeployProgress(t *testing.T) {
	t.Parallel()
	d := dep(6, strat(2, 10*time.Second, nil), nil)
	p := planDeploy(d, deployInput{scales: scales("v1", 4, "v2", 4), insts: cat(insts("v1", 0, 4, stRun, time.Hour),
		insts("v2", 0, 3, stRun, time.Minute), insts("v2", 3, 1, stStart, time.Second))}, planNow)
	if p.change == nil {
		t.Fatal("no change")
	}
	w := p.change.Next.Procs[0]
	if w.Placed != 4 || w.Healthy != 3 || w.OldLeft != 4 || w.Settled != 3 || w.Excess != 4 || w.Unhealthy != 0 {
		t.Fatalf("progress %+v", w)
	}
	if !p.change.Next.Progressed.Equal(planNow) {
		t.Fatalf("progressed %s, want now", p.change.Next.Progressed)
	}
}

// TestPlanDeploySimulated rolls deployments through a simulated fleet
// (instances start at once and run after one pass; stops are instant,
// the worst case for capacity) with the planner alone, and checks after
// every step that the instances running healthy plus the old ones never
// number fewer than count - max-parallel, that no revision's desired
// count goes above count, and that it ends with every instance on the
// new revision.
func TestPlanDeploySimulated(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ count, m, canary int }{{6, 2, 0}, {6, 1, 0}, {12, 2, 0}, {5, 3, 0}, {3, 5, 0}, {6, 2, 1}, {7, 3, 2}} {
		t.Run(fmt.Sprintf("count=%d,m=%d,canary=%d", c.count, c.m, c.canary), func(t *testing.T) {
			s := strat(c.m, 0, func(s *registry.Strategy) { s.Canary, s.AutoPromote = c.canary, true })
			simulate(t, dep(c.count, s, nil), c.count, c.m)
		})
	}
}

func simulate(t *testing.T, d registry.Deployment, count, m int) {
	desired := map[string]int{"v1": count}
	var fleet []registry.Instance // live instances
	next := 0
	add := func(rev string, st registry.InstanceState) {
		fleet = append(fleet, registry.Instance{ID: fmt.Sprintf("demo-web-%04d", next), App: "demo", Rev: rev, Proc: "web",
			State: st, Since: planNow, Created: planNow})
		next++
	}
	for range count {
		add("v1", stRun)
	}
	d.PhaseStart, d.Progressed = planNow, planNow
	for pass := 0; pass < 100; pass++ {
		// Instances started last pass run now.
		for i := range fleet {
			fleet[i].State = stRun
		}
		var sc []registry.ScaleEntry
		for rev, n := range desired {
			sc = append(sc, scale("demo", rev, "web", n))
		}
		p := planDeploy(d, deployInput{scales: sc, insts: fleet}, planNow)
		if p.change == nil {
			t.Fatalf("pass %d: nothing to do in state %s with %v", pass, d.State, desired)
		}
		for _, s := range p.change.Scales {
			if desired[s.Rev] != s.From {
				t.Fatalf("pass %d: step from %d, desired is %d", pass, s.From, desired[s.Rev])
			}
			desired[s.Rev] = s.To
			if s.To > count {
				t.Fatalf("pass %d: %s scaled to %d, above the count %d", pass, s.Rev, s.To, count)
			}
		}
		// The scale machinery: stops first (worst case), then starts.
		for rev, n := range desired {
			have := 0
			fleet = slices.DeleteFunc(fleet, func(in registry.Instance) bool {
				if in.Rev != rev {
					return false
				}
				have++
				return have > n
			})
			for ; have < n; have++ {
				add(rev, stStart)
			}
		}
		healthy := 0
		for _, in := range fleet {
			if in.State == stRun {
				healthy++
			}
		}
		if healthy < count-m {
			t.Fatalf("pass %d: %d stRun, fewer than count-max-parallel %d (desired %v)", pass, healthy, count-m, desired)
		}
		d = p.change.Next
		d.ModRevision++
		if d.State.Terminal() {
			if d.State != registry.DeploySucceeded || desired["v1"] != 0 || desired["v2"] != count {
				t.Fatalf("ended %s (%s) with %v", d.State, d.Reason, desired)
			}
			return
		}
	}
	t.Fatalf("not done after 100 passes: %s, %v", d.State, desired)
}
