package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// deployFleet is the fleet of the deployment acceptance test (issue 18):
// three agents and app "demo", whose revisions are directories with a
// Procfile each, so that every revision has its own command (v3's exits
// at once) while they share the process type "web" and its HTTP health
// check.
type deployFleet struct {
	*cluster
	t     *testing.T
	hosts []string
	// stops counts the stop tickets created per instance, starts the
	// start tickets, from a watch on the ticket keys that runs for the
	// whole test.
	mu     sync.Mutex
	stops  map[string]int
	starts map[string]int
	// portBase is the first port of host i's range (portBase+100*i, 100
	// ports): the agents share this machine, and ranges of their own keep
	// their instances' ports apart. The ranges lie below the kernel's
	// ephemeral ports (32768 up): drawn up to 59 999, an instance once
	// crash-looped on a port an outgoing connection had taken.
	portBase int
}

// start starts (or restarts) the agent of host i.
func (f *deployFleet) start(i int) {
	lo := f.portBase + 100*i
	f.startAgent(f.hosts[i], "-port-range", fmt.Sprintf("%d-%d", lo, lo+99))
}

// agent returns the running agent of host.
func (f *deployFleet) agent(host string) *agentProc {
	f.cluster.mu.Lock()
	defer f.cluster.mu.Unlock()
	return f.agents[host]
}

func newDeployFleet(t *testing.T) *deployFleet {
	c := newCluster(t)
	f := &deployFleet{cluster: c, t: t, hosts: []string{"host-a", "host-b", "host-c"},
		stops: map[string]int{}, starts: map[string]int{}, portBase: 20000 + 300*rand.IntN(40)}
	for i := range f.hosts {
		f.start(i)
	}
	ctx := c.ctx
	must(t, err2(c.reg.RegisterApp(ctx, registry.App{Name: "demo"})))
	must(t, c.reg.SetEnv(ctx, "demo", map[string]string{"VISOR_E2E": c.runID, proctest.EnvVar: "1"}))
	serve := strings.Join(proctest.Command("listen-port", "127.0.0.1:$PORT"), " ")
	for _, rev := range []string{"v1", "v2", "v3", "v4", "v5", "v6"} {
		line := "exec " + serve
		if rev == "v3" {
			line = "exit 3" // the bad revision: its process exits at once
		}
		dir := filepath.Join(t.TempDir(), rev)
		must(t, os.MkdirAll(dir, 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "Procfile"), []byte("web: "+line+"\n"), 0o644))
		must(t, err2(c.reg.RegisterRevision(ctx, registry.Revision{App: "demo", Name: rev, Dir: dir})))
	}
	must(t, err2(c.reg.SetProcType(ctx, registry.ProcType{
		App: "demo", Name: "web", StopTimeout: registry.Duration(3 * time.Second),
		// A generous threshold: twelve race-built test binaries starting
		// at once on a loaded machine take a while to listen.
		Health: &registry.HealthCheck{Type: registry.CheckHTTP, Path: "/", Period: registry.Duration(300 * time.Millisecond),
			Timeout: registry.Duration(time.Second), FailureThreshold: 30},
	})))
	f.watchTickets()
	return f
}

// watchTickets counts the start and stop tickets created per instance
// until the test ends.
func (f *deployFleet) watchTickets() {
	ctx, cancel := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	f.t.Cleanup(func() { cancel(); wg.Wait() })
	wch := f.etcd.Client(f.t).Watch(ctx, f.prefix+"tickets/", clientv3.WithPrefix())
	wg.Go(func() {
		for resp := range wch {
			for _, ev := range resp.Events {
				if !ev.IsCreate() {
					continue
				}
				var tk registry.Ticket
				if json.Unmarshal(ev.Kv.Value, &tk) != nil {
					continue
				}
				f.mu.Lock()
				switch tk.Op {
				case registry.TicketStop:
					f.stops[tk.Instance]++
				case registry.TicketStart:
					f.starts[tk.Instance]++
				}
				f.mu.Unlock()
			}
		}
	})
}

// checkTickets fails the test for an instance stopped (or started) by more
// than one ticket.
func (f *deployFleet) checkTickets(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, n := range f.stops {
		if n > 1 {
			t.Errorf("instance %s was stopped by %d stop tickets, want at most 1", id, n)
		}
	}
	for id, n := range f.starts {
		if n > 1 {
			t.Errorf("instance %s was started by %d start tickets, want 1", id, n)
		}
	}
}

// visor runs the CLI against the fleet's registry; it returns the
// combined output and the exit code.
func (f *deployFleet) visor(args ...string) (string, int) {
	f.t.Helper()
	cmd := exec.CommandContext(f.ctx, f.bin, append([]string{"--endpoints", strings.Join(f.etcd.Endpoints(), ","), "--prefix", f.prefix}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		f.t.Fatalf("visor %v: %v", args, err)
	}
	return string(out), code
}

// sample counts, every 100 ms until stop is called, the instances of demo
// the registry has running (healthy: the supervisor reports running only
// once the health check passed), and the processes per instance; it
// returns the fewest running seen and the most processes one instance had.
type sampler struct {
	mu       sync.Mutex
	min, max int
	maxProcs int
	samples  int
	stop     func()
}

func (f *deployFleet) sample() *sampler {
	s := &sampler{min: 1 << 30}
	ctx, cancel := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	s.stop = func() { cancel(); wg.Wait() }
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			insts, err := f.reg.AppInstances(ctx, "demo")
			if err == nil {
				n := 0
				for _, in := range insts {
					if in.State == registry.InstanceRunning {
						n++
					}
				}
				procs := 0
				for _, pids := range f.workloads() {
					procs = max(procs, len(pids))
				}
				s.mu.Lock()
				s.min, s.max, s.maxProcs = min(s.min, n), max(s.max, n), max(s.maxProcs, procs)
				s.samples++
				s.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	return s
}

func (s *sampler) result() (minRunning, maxRunning, maxProcs, samples int) {
	s.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.min, s.max, s.maxProcs, s.samples
}

// revsRunning counts demo's running instances per revision.
func (f *deployFleet) revsRunning() map[string]int {
	out := map[string]int{}
	for _, in := range f.running("demo") {
		out[in.Rev]++
	}
	return out
}

// waitDeploy waits until demo's deployment to rev is in one of the
// states, and returns it.
func (f *deployFleet) waitDeploy(t *testing.T, rev string, timeout time.Duration, states ...registry.DeployState) registry.Deployment {
	t.Helper()
	timeout = testtime.Scaled(timeout)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var d registry.Deployment
	var err error
	for {
		d, err = f.reg.Deployment(f.ctx, "demo")
		if err == nil && d.Rev == rev {
			for _, s := range states {
				if d.State == s {
					return d
				}
			}
		}
		select {
		case <-deadline.C:
			t.Fatalf("deployment of demo to %s not %v after %s: %+v (%v)", rev, states, timeout, d, err)
		case <-tick.C:
		}
	}
}

// waitHealthy waits until demo's deployment to rev counts at least n new
// instances healthy: mid-deploy.
func (f *deployFleet) waitHealthy(t *testing.T, rev string, n int) {
	t.Helper()
	timeout := testtime.Scaled(2 * time.Minute)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if f.revsRunning()[rev] >= n {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("demo: %d instances of %s not running after %s: %v", n, rev, timeout, f.revsRunning())
		case <-tick.C:
		}
	}
}

// leader returns the host of the elected reconciler.
func (f *deployFleet) leader(t *testing.T) string {
	t.Helper()
	resp, err := f.etcd.Client(t).Get(f.ctx, f.prefix+"leader/", clientv3.WithFirstCreate()...)
	must(t, err)
	if len(resp.Kvs) == 0 {
		t.Fatal("no reconciler leader")
	}
	return string(resp.Kvs[0].Value)
}

// settledOn waits until demo runs exactly 12 instances, all of rev, each
// with one process.
func (f *deployFleet) settledOn(t *testing.T, rev string) {
	t.Helper()
	got := f.waitSettledIn(t, "demo", 12, 2*time.Minute)
	for id, in := range got {
		if in.Rev != rev {
			t.Fatalf("demo settled with instance %s of %s, want all of %s: %v", id, in.Rev, rev, f.revsRunning())
		}
	}
}

// TestDeployAcceptance is issue 18's acceptance test, on three real
// agents and one app of 12 instances with an HTTP health check:
// a rolling deploy never has fewer than count - max-parallel healthy; a
// revision whose process exits at once fails and is reverted without
// dropping below that either; killing the leader (kill -9) and
// restarting every agent mid-deploy neither stops nor doubles the
// rollout (no instance started or stopped by two tickets, never two
// processes for one instance); a canary waits for promotion; rollback
// goes back; the history records it all.
func TestDeployAcceptance(t *testing.T) {
	f := newDeployFleet(t)
	// The process type's own strategy, released with every revision:
	// what rollback (which takes no strategy flags) moves by.
	if out, code := f.visor("proc", "set", "demo", "web", "--max-parallel", "4", "--min-healthy", "1s"); code != 0 {
		t.Fatalf("proc set --max-parallel: exit %d\n%s", code, out)
	}
	out, code := f.visor("scale", "demo", "v1", "web=12", "--wait", "--wait-timeout", testtime.Scaled(3*time.Minute).String())
	if code != 0 {
		t.Fatalf("scale demo v1 web=12: exit %d\n%s", code, out)
	}
	f.settledOn(t, "v1")
	wait := []string{"--wait", "--wait-timeout", testtime.Scaled(4 * time.Minute).String()}

	t.Run("rolling max-parallel 2", func(t *testing.T) {
		s := f.sample()
		out, code := f.visor(append([]string{"deploy", "demo", "v2", "--max-parallel", "2", "--min-healthy", "1s"}, wait...)...)
		lo, hi, procs, n := s.result()
		if code != 0 {
			t.Fatalf("deploy demo v2 --wait: exit %d, want 0\n%s", code, out)
		}
		t.Logf("%d samples: running between %d and %d", n, lo, hi)
		if lo < 10 || hi > 14 || procs > 1 {
			t.Errorf("during the deploy: fewest running %d (want >= 10), most %d (want <= 14), most processes per instance %d (want 1)", lo, hi, procs)
		}
		f.settledOn(t, "v2")
	})

	t.Run("failing revision reverts", func(t *testing.T) {
		s := f.sample()
		out, code := f.visor(append([]string{"deploy", "demo", "v3", "--max-parallel", "2", "--min-healthy", "1s",
			"--healthy-deadline", "20s", "--auto-revert"}, wait...)...)
		if code != 1 || !strings.Contains(out, "v3") {
			t.Fatalf("deploy demo v3 (exits at once) --wait: exit %d, want 1 naming why\n%s", code, out)
		}
		d := f.waitDeploy(t, "v3", 3*time.Minute, registry.DeployReverted, registry.DeployFailed)
		f.settledOn(t, "v2")
		lo, _, procs, n := s.result()
		t.Logf("v3: %s (%s); %d samples, fewest running %d", d.State, d.Reason, n, lo)
		if lo < 10 || procs > 1 {
			t.Errorf("during the failed deploy and its revert: fewest running %d (want >= 10), most processes per instance %d", lo, procs)
		}
		if d.Reason == "" {
			t.Errorf("failed deployment records no reason: %+v", d)
		}
	})

	t.Run("kill -9 the leader mid-deploy", func(t *testing.T) {
		s := f.sample()
		out, code := f.visor("deploy", "demo", "v4", "--max-parallel", "2", "--min-healthy", "1s")
		if code != 0 {
			t.Fatalf("deploy demo v4: exit %d\n%s", code, out)
		}
		f.waitHealthy(t, "v4", 2)
		lead := f.leader(t)
		a := f.agent(lead)
		a.signal(syscall.SIGKILL)
		a.wait(t, 30*time.Second)
		f.start(slices.Index(f.hosts, lead))
		f.waitDeploy(t, "v4", 4*time.Minute, registry.DeploySucceeded)
		f.settledOn(t, "v4")
		_, _, procs, _ := s.result()
		if procs > 1 {
			t.Errorf("an instance had %d processes", procs)
		}
		f.checkTickets(t)
	})

	t.Run("restart every agent mid-deploy", func(t *testing.T) {
		s := f.sample()
		out, code := f.visor("deploy", "demo", "v5", "--max-parallel", "2", "--min-healthy", "1s")
		if code != 0 {
			t.Fatalf("deploy demo v5: exit %d\n%s", code, out)
		}
		f.waitHealthy(t, "v5", 2)
		for _, h := range f.hosts {
			f.agent(h).signal(syscall.SIGTERM)
		}
		for _, h := range f.hosts {
			f.agent(h).wait(t, 30*time.Second)
		}
		for i := range f.hosts {
			f.start(i)
		}
		f.waitDeploy(t, "v5", 4*time.Minute, registry.DeploySucceeded)
		f.settledOn(t, "v5")
		_, _, procs, _ := s.result()
		if procs > 1 {
			t.Errorf("an instance had %d processes", procs)
		}
		f.checkTickets(t)
	})

	t.Run("canary and promote", func(t *testing.T) {
		out, code := f.visor("deploy", "demo", "v6", "--canary", "1", "--max-parallel", "4", "--min-healthy", "1s")
		if code != 0 {
			t.Fatalf("deploy demo v6 --canary 1: exit %d\n%s", code, out)
		}
		f.waitDeploy(t, "v6", 2*time.Minute, registry.DeployAwaitingPromotion)
		if got := f.revsRunning(); got["v6"] != 1 || got["v5"] != 12 {
			t.Fatalf("awaiting promotion: running %v, want 1 canary of v6 beside 12 of v5", got)
		}
		status, code := f.visor("deploy", "status", "demo")
		if code != 0 || !strings.Contains(status, "awaiting promotion") {
			t.Fatalf("deploy status while awaiting promotion: exit %d\n%s", code, status)
		}
		if out, code := f.visor("deploy", "promote", "demo"); code != 0 {
			t.Fatalf("deploy promote demo: exit %d\n%s", code, out)
		}
		f.waitDeploy(t, "v6", 3*time.Minute, registry.DeploySucceeded)
		f.settledOn(t, "v6")
	})

	t.Run("rollback", func(t *testing.T) {
		out, code := f.visor(append([]string{"rollback", "demo"}, wait...)...)
		if code != 0 {
			t.Fatalf("rollback demo --wait: exit %d\n%s", code, out)
		}
		f.settledOn(t, "v5")
		var hist []struct {
			Rev, State, By string
			From           []string
		}
		out, code = f.visor("deploys", "demo", "-o", "json")
		if code != 0 || json.Unmarshal([]byte(out), &hist) != nil {
			t.Fatalf("deploys demo -o json: exit %d\n%s", code, out)
		}
		var got []string
		for _, h := range hist {
			got = append(got, fmt.Sprintf("%s->%s:%s", strings.Join(h.From, ","), h.Rev, h.State))
			if h.By == "" {
				t.Errorf("deployment to %s records nobody", h.Rev)
			}
		}
		want := []string{"v1->v2:succeeded", "v2->v3:", "v2->v4:succeeded", "v4->v5:succeeded", "v5->v6:succeeded", "v6->v5:succeeded"}
		if len(got) != len(want) {
			t.Fatalf("history %v, want %v", got, want)
		}
		for i := range want {
			if !strings.HasPrefix(got[i], want[i]) {
				t.Errorf("history[%d] = %s, want %s...", i, got[i], want[i])
			}
		}
	})
	f.checkTickets(t)
}
