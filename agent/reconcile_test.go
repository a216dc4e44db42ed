package agent

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

func TestEligibleHosts(t *testing.T) {
	hosts := []registry.Host{{ID: "a"}, {ID: "b"}, {ID: "c", Draining: true}}
	cases := []struct {
		name string
		t    registry.Ticket
		want int
	}{
		{"untargeted", registry.Ticket{}, 2},
		{"one failed", registry.Ticket{FailedHosts: []string{"a"}}, 1},
		{"all failed", registry.Ticket{FailedHosts: []string{"a", "b"}}, 0},
		{"targeted at a live host", registry.Ticket{Host: "b"}, 1},
		{"targeted at a draining host", registry.Ticket{Host: "c"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := eligibleHosts(tc.t, hosts); got != tc.want {
				t.Fatalf("eligibleHosts = %d, want %d", got, tc.want)
			}
		})
	}
}

// A host that dies is replaced after the grace; when it comes back it stops
// its now-duplicate processes.
func TestReconcilerReplacesDeadHostAndReturningHostStopsDuplicates(t *testing.T) {
	f := newFixture(t)
	fast := func(c *Config) {
		c.TTL = 2 * time.Second
		c.LostGrace = time.Second
		c.ReconcileInterval = time.Second
	}
	dirA := t.TempDir()
	a := f.startAgent(t, "host-a", dirA, fast)
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 4)
	must(t, err)
	before := f.waitRunning(t, "demo", 4)
	var onA []registry.Instance
	for _, in := range before {
		onA = append(onA, in)
	}
	b := f.startAgent(t, "host-b", t.TempDir(), func(c *Config) { fast(c); c.StopOnExit = true })
	proctest.WaitFor(t, 10*time.Second, "host-b registered", func() bool {
		_, err := f.reg.Host(f.ctx, "host-b")
		return err == nil
	})
	a.stop(t) // "dies": its processes keep running, its lease expires
	t.Cleanup(func() {
		for _, in := range onA {
			killPID(in.PID)
		}
	})

	proctest.WaitFor(t, 30*time.Second, "all 4 instances running on host-b", func() bool {
		run := f.running(t, "demo")
		if len(run) != 4 {
			return false
		}
		for _, in := range run {
			if in.Host != "host-b" {
				return false
			}
		}
		return true
	})
	// The dead host's endpoints went with its lease; the replacements are in.
	f.waitEndpoints(t, b.Agent, 4)
	eps, err := b.services.Lookup(f.ctx, "demo.web", "", false)
	must(t, err)
	for _, ep := range eps {
		if ep.Host != "host-b" {
			t.Errorf("endpoint %s of host %s survived its host", ep.ID, ep.Host)
		}
	}
	for _, in := range onA {
		got, err := f.reg.Instance(f.ctx, in.ID)
		must(t, err)
		if got.State != registry.InstanceLost {
			t.Errorf("instance %s of the dead host is %s, want lost", in.ID, got.State)
		}
	}
	// host-a returns: its old processes are duplicates now and must stop.
	a2 := f.startAgent(t, "host-a", dirA, fast)
	for _, in := range onA {
		pid := in.PID
		proctest.WaitFor(t, 30*time.Second, "returning host stops its replaced instance", func() bool { return !proctest.Alive(pid) })
	}
	a2.stop(t)
	if n := len(f.running(t, "demo")); n != 4 {
		t.Errorf("%d running after host-a returned, want 4", n)
	}
	b.stop(t)
}

// A drained host's instances are replaced elsewhere first, then stopped.
func TestDrainReplacesBeforeStopping(t *testing.T) {
	f := newFixture(t)
	fast := func(c *Config) {
		c.StopOnExit = true
		c.ReconcileInterval = time.Second
	}
	a := f.startAgent(t, "host-a", t.TempDir(), fast)
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 2)
	must(t, err)
	old := f.waitRunning(t, "demo", 2)
	b := f.startAgent(t, "host-b", t.TempDir(), fast)
	proctest.WaitFor(t, 10*time.Second, "host-b registered", func() bool {
		_, err := f.reg.Host(f.ctx, "host-b")
		return err == nil
	})

	_, err = f.reg.Drain(f.ctx, "host-b", 0)
	if err != nil {
		t.Fatalf("drain host-b: %v", err)
	}
	_, err = f.reg.Drain(f.ctx, "host-a", 0)
	if err == nil {
		t.Fatalf("draining the last undrained host was accepted")
	}
	must(t, f.reg.Undrain(f.ctx, "host-b"))
	_, err = f.reg.Drain(f.ctx, "host-a", time.Minute)
	must(t, err)

	proctest.WaitFor(t, 30*time.Second, "both instances moved to host-b", func() bool {
		run := f.running(t, "demo")
		if len(run) != 2 {
			return false
		}
		for _, in := range run {
			if in.Host != "host-b" {
				return false
			}
		}
		return true
	})
	for id, in := range old {
		proctest.WaitFor(t, 15*time.Second, "old instance "+id+" exited", func() bool {
			got, err := f.reg.Instance(f.ctx, id)
			return err == nil && got.State == registry.InstanceExited && !proctest.Alive(in.PID)
		})
		got, err := f.reg.Instance(f.ctx, id)
		must(t, err)
		rep, err := f.reg.Instance(f.ctx, got.ReplacedBy)
		must(t, err)
		if rep.Since.After(got.Since) {
			t.Errorf("old %s stopped at %s before its replacement %s ran at %s", id, got.Since, rep.ID, rep.Since)
		}
	}
	// A draining host claims no new work.
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 3)
	must(t, err)
	for _, in := range f.waitRunning(t, "demo", 3) {
		if in.Host != "host-b" {
			t.Errorf("instance %s started on draining host %s", in.ID, in.Host)
		}
	}
	a.stop(t)
	b.stop(t)
}

// The plan re-applies only the scales whose count drifted, so its count
// must be RescaleIn's: for stored scales and instance records of every
// kind that counts or not, the drift planned from a snapshot read through
// the registry is what RescaleIn then writes (tickets started minus
// stopped and cancelled), and a scale in place is not re-applied.
func TestReconcilerCountAgreesWithRescale(t *testing.T) {
	f := newFixture(t)
	cli, p := f.reg.Client(), f.reg.Prefix()
	log := hclog.NewNullLogger()
	// No host is alive: RescaleIn writes every ticket (nothing can be
	// overloaded), and the grace is long enough that nothing is lost.
	r := newReconciler(f.reg, log, reconcileConfig{interval: time.Minute, lostGrace: time.Hour}, newBadRecords(log))
	check := func(label string) {
		t.Helper()
		s, _, ok := r.readSnapshot(f.ctx, time.Now())
		if !ok {
			t.Fatalf("%s: snapshot not read", label)
		}
		pl := planPass(s, r.mem, r.cfg)
		drift, planned := 0, false
		for _, rs := range pl.rescale {
			if rs.entry.App == "demo" && rs.entry.Rev == "v1" && rs.entry.Proc == "web" {
				drift, planned = rs.drift, true
			}
		}
		res, err := f.reg.RescaleIn(f.ctx, "demo", "v1", "web", nil)
		must(t, err)
		wrote := len(res.Started) - len(res.Stopped) - len(res.Cancelled)
		if wrote != drift || planned != (drift != 0) {
			t.Fatalf("%s: planned drift %d (re-applied: %v), RescaleIn wrote %+d (%+v)", label, drift, planned, wrote, res)
		}
	}
	put := func(k, v string) {
		t.Helper()
		_, err := cli.Put(f.ctx, p+k, v)
		must(t, err)
	}
	raw := func(in registry.Instance) {
		t.Helper()
		b, err := json.Marshal(in)
		must(t, err)
		put("instances/"+in.ID, string(b))
	}

	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 3)
	must(t, err)
	check("scaled to 3: in place")
	put("apps/demo/scale/v1/web", "5")
	check("stored 5: drift up")
	put("apps/demo/scale/v1/web", "1")
	check("stored 1: drift down, pending tickets cancelled")

	now := time.Now().UTC()
	live := func(id string, st registry.InstanceState, f func(*registry.Instance)) {
		in := registry.Instance{ID: id, App: "demo", Rev: "v1", Proc: "web", Host: "gone-host", State: st,
			Since: now, Created: now}
		if f != nil {
			f(&in)
		}
		raw(in)
	}
	live("demo-web-run1", registry.InstanceRunning, nil)
	live("demo-web-back2", registry.InstanceBackoff, nil)
	live("demo-web-stop3", registry.InstanceStopping, nil)
	live("demo-web-stop4", registry.InstanceRunning, func(in *registry.Instance) { in.StopTicket = "0000000000000000stop" })
	live("demo-web-repl5", registry.InstanceRunning, func(in *registry.Instance) { in.ReplacedBy = "demo-web-new5" })
	live("other-web-run6", registry.InstanceRunning, nil)
	live("demo-web-exit7", registry.InstanceExited, nil)
	check("records of every kind: one pending, a running and a backoff one count")
	put("apps/demo/scale/v1/web", "6")
	check("stored 6: drift up past them")
	put("apps/demo/scale/v1/web", "0")
	check("stored 0: everything counted stops")
	check("stored 0 again: in place")
}
