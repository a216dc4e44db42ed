package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// fixture is a registry on a real embedded etcd with one app, revision and
// proc type whose instances are the test binary acting as "sleep".
type fixture struct {
	reg *registry.Registry
	ctx context.Context
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	c := etcdtest.New(t)
	reg := registry.New(c.Client(t), etcdtest.Prefix(t), hclog.NewNullLogger())
	// Registered first, so it runs last, once every agent of the test has
	// stopped: instances outlive their agent by design, and a test that
	// leaves one running must not leave it behind.
	t.Cleanup(func() { killInstances(t, reg) })
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(2*time.Minute))
	t.Cleanup(cancel)
	f := &fixture{reg: reg, ctx: ctx}
	must(t, f.app("demo", "sleep 1h"))
	return f
}

// killInstances SIGKILLs the process group of every instance recorded in
// reg whose process still runs (checked by its VISOR_INSTANCE variable, so
// a reused pid is left alone).
func killInstances(t *testing.T, reg *registry.Registry) {
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(10*time.Second))
	defer cancel()
	all, err := reg.Instances(ctx)
	if err != nil && len(all) == 0 {
		t.Logf("cleanup: list instances: %v", err)
		return
	}
	for _, in := range all {
		if in.PID <= 0 || !proctest.Alive(in.PID) {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", in.PID))
		if err != nil || !bytes.Contains(env, []byte("VISOR_INSTANCE="+in.ID+"\x00")) {
			continue
		}
		t.Logf("cleanup: killing instance %s (pid %d) left running", in.ID, in.PID)
		_ = syscall.Kill(-in.PID, syscall.SIGKILL)
		_ = syscall.Kill(in.PID, syscall.SIGKILL)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// app registers app name with revision v1 (a directory) and proc "web"
// running the given proctest workload.
func (f *fixture) app(name, workload string) error {
	if _, err := f.reg.RegisterApp(f.ctx, registry.App{Name: name}); err != nil {
		return err
	}
	if _, err := f.reg.RegisterRevision(f.ctx, registry.Revision{App: name, Name: "v1", Dir: os.TempDir()}); err != nil {
		return err
	}
	_, err := f.reg.SetProcType(f.ctx, registry.ProcType{
		App:         name,
		Name:        "web",
		Command:     "exec " + strings.Join(proctest.Command(strings.Fields(workload)[0], strings.Fields(workload)[1:]...), " "),
		Env:         map[string]string{proctest.EnvVar: "1"},
		StopTimeout: registry.Duration(2 * time.Second),
		Restart:     registry.RestartPolicy{InitialDelay: registry.Duration(50 * time.Millisecond)},
	})
	return err
}

type testAgent struct {
	*Agent
	cancel context.CancelFunc
	done   chan error
}

// startAgent runs an agent for host on f's registry; stop it with stop.
func (f *fixture) startAgent(t *testing.T, host, dataDir string, mod func(*Config)) *testAgent {
	t.Helper()
	cfg := Config{
		HostID:   host,
		DataDir:  dataDir,
		RunDir:   filepath.Join(dataDir, "run"),
		HTTPAddr: "127.0.0.1:0",
		// Most tests call the API over HTTP; auth_test.go tests tokens.
		InsecureHTTP: true,
		TTL:          testtime.Scaled(10 * time.Second), // a loaded machine's stalls must not end the session
		ClaimDelay:   time.Millisecond,
		Cgroups:      "none",
		// Slots enough for every test on any machine (the automatic
		// capacity depends on its memory); mod may set a smaller one.
		Capacity: 1000,
		Logger:   hclog.New(&hclog.LoggerOptions{Name: host, Level: hclog.Debug, Output: testWriter{t}}),
	}
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(cfg, f.reg)
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- a.Run(ctx) }()
	t.Cleanup(func() { ta.stop(t) })
	return ta
}

// stop cancels the agent and waits for Run to return (its ShutdownTimeout
// and a margin, scaled).
func (ta *testAgent) stop(t *testing.T) {
	t.Helper()
	if ta.done == nil {
		return
	}
	ta.cancel()
	select {
	case err := <-ta.done:
		if err != nil {
			t.Errorf("agent Run: %v", err)
		}
	case <-time.After(testtime.Scaled(ShutdownTimeout + 5*time.Second)):
		t.Errorf("agent did not stop within %v", testtime.Scaled(ShutdownTimeout+5*time.Second))
	}
	ta.done = nil
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// running returns the app's instances in state running, keyed by id.
func (f *fixture) running(t *testing.T, app string) map[string]registry.Instance {
	t.Helper()
	insts, err := f.reg.AppInstances(f.ctx, app)
	must(t, err)
	out := map[string]registry.Instance{}
	for _, in := range insts {
		if in.State == registry.InstanceRunning {
			out[in.ID] = in
		}
	}
	return out
}

func (f *fixture) waitRunning(t *testing.T, app string, n int) map[string]registry.Instance {
	t.Helper()
	var got map[string]registry.Instance
	proctest.WaitFor(t, 90*time.Second, fmt.Sprintf("%d running instances of %s", n, app), func() bool {
		got = f.running(t, app)
		if len(got) != n {
			return false
		}
		for _, in := range got {
			if !proctest.Alive(in.PID) {
				return false
			}
		}
		return true
	})
	return got
}

func TestAgentScaleUpAndDown(t *testing.T) {
	f := newFixture(t)
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true; c.DNSAddr = dnsAddr })

	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 3)
	must(t, err)
	up := f.waitRunning(t, "demo", 3)
	f.waitEndpoints(t, a.Agent, 3)
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dnsAddr)
	}}
	_, srvs, err := resolver.LookupSRV(f.ctx, "", "", "web.demo.visor.")
	if err != nil || len(srvs) != 3 {
		t.Errorf("DNS SRV web.demo.visor. = %v, %v; want 3 records", srvs, err)
	}
	for _, r := range srvs {
		found := false
		for _, in := range up {
			found = found || int(r.Port) == in.Port
		}
		if !found {
			t.Errorf("SRV record port %d is no running instance's port", r.Port)
		}
	}
	ports := map[int]bool{}
	for id, in := range up {
		if in.Host != "host-a" || in.Port == 0 || in.PID == 0 {
			t.Errorf("instance %s: host %q port %d pid %d", id, in.Host, in.Port, in.PID)
		}
		if ports[in.Port] {
			t.Errorf("port %d given twice", in.Port)
		}
		ports[in.Port] = true
	}
	proctest.WaitFor(t, 10*time.Second, "start tickets completed", func() bool {
		ts, err := f.reg.Tickets(f.ctx)
		return err == nil && len(ts) == 0
	})

	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	left := f.waitRunning(t, "demo", 1)
	for id, in := range up {
		if _, kept := left[id]; kept {
			continue
		}
		proctest.WaitFor(t, 10*time.Second, "stopped process "+id+" gone", func() bool { return !proctest.Alive(in.PID) })
		proctest.WaitFor(t, 10*time.Second, "instance "+id+" exited in the registry", func() bool {
			got, err := f.reg.Instance(f.ctx, id)
			return err == nil && got.State == registry.InstanceExited
		})
	}
	f.waitEndpoints(t, a.Agent, 1)
	a.stop(t)
	for _, in := range left {
		if proctest.Alive(in.PID) {
			t.Errorf("StopOnExit: pid %d still alive after agent exit", in.PID)
		}
	}
}

// TestAgentInstanceTickets: restart, signal and stop tickets for one
// instance. A restart runs a new process in place and the registry never
// shows it stopping or ended (which would have the reconciler replace it); a stop
// ends it for good.
func TestAgentInstanceTickets(t *testing.T) {
	f := newFixture(t)
	f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true })
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	var in registry.Instance
	for _, only := range f.waitRunning(t, "demo", 1) {
		in = only
	}
	from, err := f.reg.CurrentRevision(f.ctx)
	must(t, err)

	rt, err := f.reg.CreateTicket(f.ctx, registry.Ticket{Op: registry.TicketRestart, Instance: in.ID})
	must(t, err)
	proctest.WaitFor(t, 20*time.Second, "restart ticket done", func() bool {
		_, err := f.reg.Ticket(f.ctx, rt.ID)
		return errors.Is(err, registry.ErrNotFound)
	})
	// The agent writes the new process's state before it completes the
	// ticket.
	got, err := f.reg.Instance(f.ctx, in.ID)
	must(t, err)
	if got.State != registry.InstanceRunning || got.PID == in.PID || got.PID == 0 || got.Restarts["manual"] != 1 {
		t.Fatalf("after restart: %+v (pid before %d)", got, in.PID)
	}
	if proctest.Alive(in.PID) {
		t.Errorf("old pid %d still alive after restart", in.PID)
	}
	history, err := f.reg.Events(f.ctx, from+1, 0)
	must(t, err)
	// The new process may be seen starting (a state write can land before
	// it is up, on a loaded machine); it must never be seen stopping or
	// ended, which the reconciler would act on.
	for _, ev := range history {
		if ev.Type == registry.InstanceChanged && ev.Instance == in.ID && !ev.State.Live() {
			t.Errorf("restart showed instance %s as %s in the registry", in.ID, ev.State)
		}
	}

	sig, err := f.reg.CreateTicket(f.ctx, registry.Ticket{Op: registry.TicketSignal, Instance: in.ID, Signal: "STOP"})
	must(t, err)
	proctest.WaitFor(t, 20*time.Second, "signal ticket done", func() bool {
		_, err := f.reg.Ticket(f.ctx, sig.ID)
		return errors.Is(err, registry.ErrNotFound)
	})
	must(t, syscall.Kill(got.PID, syscall.SIGCONT))
	pid := got.PID

	st, err := f.reg.CreateTicket(f.ctx, registry.Ticket{Op: registry.TicketStop, Instance: in.ID})
	must(t, err)
	proctest.WaitFor(t, 20*time.Second, "stop ticket done", func() bool {
		_, err := f.reg.Ticket(f.ctx, st.ID)
		return errors.Is(err, registry.ErrNotFound)
	})
	got, err = f.reg.Instance(f.ctx, in.ID)
	must(t, err)
	if got.State != registry.InstanceExited || got.StopTicket != st.ID {
		t.Fatalf("after stop: %+v", got)
	}
	proctest.WaitFor(t, 10*time.Second, "stopped process gone", func() bool { return !proctest.Alive(pid) })
}

func TestAgentRestartReadoptsInstances(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	a := f.startAgent(t, "host-a", dir, nil)
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 2)
	must(t, err)
	before := f.waitRunning(t, "demo", 2)
	a.stop(t) // instances keep running

	for _, in := range before {
		if !proctest.Alive(in.PID) {
			t.Fatalf("instance %s (pid %d) died with the agent", in.ID, in.PID)
		}
	}
	b := f.startAgent(t, "host-a", dir, func(c *Config) { c.StopOnExit = true })
	proctest.WaitFor(t, 20*time.Second, "re-adopted instances", func() bool {
		for _, st := range b.Supervisor().List() {
			if st.State != supervisor.StateRunning {
				return false
			}
		}
		return len(b.Supervisor().List()) == 2
	})
	after := f.waitRunning(t, "demo", 2)
	for id, in := range before {
		got, ok := after[id]
		if !ok || got.PID != in.PID {
			t.Errorf("instance %s: pid %d before restart, %+v after", id, in.PID, got)
		}
		if n := got.Restarts["fail"]; n != 0 {
			t.Errorf("instance %s restarted %d times across an agent restart", id, n)
		}
	}
	b.stop(t)
}

func TestAgentBadTicketsAreReleasedWithReason(t *testing.T) {
	f := newFixture(t)
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true })

	cases := []struct {
		app, want string
		setup     func() error
	}{
		{"missing-artifact", "no such file", func() error {
			_, err := f.reg.RegisterRevision(f.ctx, registry.Revision{App: "missing-artifact", Name: "v2", ArtifactURL: "file:///nonexistent/a.tar.gz", SHA256: strings.Repeat("ab", 32)})
			return err
		}},
		{"unreachable-url", "fetch", func() error {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			addr := l.Addr().String()
			l.Close() // nothing listens there any more
			_, err = f.reg.RegisterRevision(f.ctx, registry.Revision{App: "unreachable-url", Name: "v2", ArtifactURL: "http://" + addr + "/a.tar.gz", SHA256: strings.Repeat("ab", 32)})
			return err
		}},
		{"wrong-sha", "sha256 mismatch", func() error {
			p, _ := makeArtifact(t, map[string]string{"Procfile": "web: sleep 1\n"})
			_, err := f.reg.RegisterRevision(f.ctx, registry.Revision{App: "wrong-sha", Name: "v2", ArtifactURL: "file://" + p, SHA256: strings.Repeat("0", 64)})
			return err
		}},
		{"no-command", "not found", func() error {
			_, err := f.reg.SetProcType(f.ctx, registry.ProcType{App: "no-command", Name: "web", Command: "exec /nonexistent/binary"})
			if err != nil {
				return err
			}
			_, err = f.reg.RegisterRevision(f.ctx, registry.Revision{App: "no-command", Name: "v2", Dir: os.TempDir()})
			return err
		}},
	}
	for _, tc := range cases {
		must(t, f.app(tc.app, "sleep 1h"))
		must(t, tc.setup())
		_, err := f.reg.Scale(f.ctx, tc.app, "v2", "web", 1)
		must(t, err)
	}
	for _, tc := range cases {
		proctest.WaitFor(t, 30*time.Second, tc.app+" ticket released with a reason", func() bool {
			ts, err := f.reg.Tickets(f.ctx)
			must(t, err)
			for _, tk := range ts {
				if tk.App == tc.app && len(tk.Reasons) > 0 {
					if !strings.Contains(strings.Join(tk.Reasons, "; "), tc.want) {
						t.Fatalf("%s: reasons %q do not mention %q", tc.app, tk.Reasons, tc.want)
					}
					return contains(tk.FailedHosts, "host-a")
				}
			}
			// The ticket may also have run out of attempts: instance failed.
			insts, _ := f.reg.AppInstances(f.ctx, tc.app)
			for _, in := range insts {
				if in.State == registry.InstanceFailed && strings.Contains(in.Reason, tc.want) {
					return true
				}
			}
			return false
		})
	}
	// The agent keeps serving good tickets.
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	f.waitRunning(t, "demo", 1)
	a.stop(t)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestAgentLocalAPI(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	a := f.startAgent(t, "host-a", dir, func(c *Config) { c.StopOnExit, c.EnablePprof = true, true })
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	inst := f.waitRunning(t, "demo", 1)
	var id string
	for k := range inst {
		id = k
	}

	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "run", SocketName))
		},
	}}
	get := func(path string) (int, string) {
		resp, err := client.Get("http://agent" + path)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/v1/status")
	var st Status
	if code != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Host != "host-a" || !st.Connected || st.Instances["running"] != 1 {
		t.Errorf("/v1/status = %d %s", code, body)
	}
	if code, body := get("/v1/instances/" + id); code != 200 || !strings.Contains(body, id) {
		t.Errorf("/v1/instances/%s = %d %s", id, code, body)
	}
	if code, _ := get("/v1/instances/nope"); code != 404 {
		t.Errorf("unknown instance: %d, want 404", code)
	}
	if code, _ := get("/v1/instances/" + id + "/logs?stream=nope"); code != 400 {
		t.Errorf("bad stream: %d, want 400", code)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "visor_agent_claims_won_total 1") || !strings.Contains(body, `visor_agent_instances{state="running"} 1`) {
		t.Errorf("/metrics = %d, missing claim/instance figures:\n%s", code, body)
	}
	if code, body := get("/debug/pprof/cmdline"); code != 200 || body == "" {
		t.Errorf("/debug/pprof/cmdline with EnablePprof = %d %q", code, body)
	}
	post := func(path, body string) int {
		resp, err := client.Post("http://agent"+path, "application/json", strings.NewReader(body))
		must(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post("/v1/instances/"+id+"/signal", `{"signal":"BOGUS"}`); c != 400 {
		t.Errorf("unknown signal: %d, want 400", c)
	}
	if c := post("/v1/instances/"+id+"/signal", `{"signal":"STOP"}`); c != 200 {
		t.Errorf("STOP: %d, want 200", c)
	}
	if c := post("/v1/instances/"+id+"/signal", `{"signal":"CONT"}`); c != 200 {
		t.Errorf("CONT: %d, want 200", c)
	}

	// External service registration goes through the agent's API and is
	// stored on the agent's lease.
	if c := post("/v1/services/payments@1.2.0", `{"address":"127.0.0.1","port":7000,"ttl":"30s"}`); c != 201 {
		t.Errorf("register external service: %d, want 201", c)
	}
	if c := post("/v1/services/payments@1.2.0", `{"address":"127.0.0.1","port":70000}`); c != 400 {
		t.Errorf("register with port 70000: %d, want 400", c)
	}
	if code, body := get("/v1/services/payments?version=^1.2"); code != 200 || !strings.Contains(body, `"port": 7000`) && !strings.Contains(body, `"port":7000`) {
		t.Errorf("lookup payments@^1.2 = %d %s", code, body)
	}
	eps, err := a.services.Lookup(f.ctx, "payments", "", false)
	must(t, err)
	if len(eps) != 1 {
		t.Fatalf("payments endpoints = %+v", eps)
	}
	resp2, err := a.reg.Client().Get(f.ctx, a.reg.Prefix()+"services/payments/"+eps[0].ID)
	must(t, err)
	if len(resp2.Kvs) != 1 || resp2.Kvs[0].Lease != int64(a.sess.current().Lease()) {
		t.Errorf("external registration not bound to the host lease: %+v", resp2.Kvs)
	}

	// Over HTTP a token is not needed on loopback without one configured.
	resp, err := http.Get("http://" + a.HTTPAddr() + "/healthz")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz over http: %d", resp.StatusCode)
	}
}

// killPID kills a leftover test process and its group.
func killPID(pid int) {
	if pid > 0 {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// waitEndpoints waits until service demo.web has n endpoints.
func (f *fixture) waitEndpoints(t *testing.T, a *Agent, n int) {
	t.Helper()
	proctest.WaitFor(t, 10*time.Second, fmt.Sprintf("%d endpoints of demo.web", n), func() bool {
		eps, err := a.services.Lookup(f.ctx, "demo.web", "", true)
		return err == nil && len(eps) == n
	})
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	must(t, err)
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// A crashed instance (restart policy never) leaves service discovery.
func TestAgentCrashedInstanceLeavesDiscovery(t *testing.T) {
	f := newFixture(t)
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true })
	_, err := f.reg.SetProcType(f.ctx, registry.ProcType{
		App: "demo", Name: "web",
		Command: "exec " + strings.Join(proctest.Command("sleep"), " "),
		Env:     map[string]string{proctest.EnvVar: "1"},
		Restart: registry.RestartPolicy{Policy: "never"},
	})
	must(t, err)
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 2)
	must(t, err)
	run := f.waitRunning(t, "demo", 2)
	f.waitEndpoints(t, a.Agent, 2)
	for _, in := range run {
		killPID(in.PID)
		break
	}
	f.waitEndpoints(t, a.Agent, 1)
	a.stop(t)
}

// TestAgentCapacity: a host with capacity 2 runs 2 of a scale of 5; the
// registry writes start tickets only for those 2 (the fleet's room), and
// the other 3 wait with the reason in the scale's status. When another
// host joins, the reconciler admits them and that host takes them.
func TestAgentCapacity(t *testing.T) {
	f := newFixture(t)
	f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true; c.Capacity = 2 })
	proctest.WaitFor(t, 10*time.Second, "host-a advertising 2 slots", func() bool {
		h, err := f.reg.Host(f.ctx, "host-a")
		return err == nil && h.Capacity == 2 && h.Resources != nil
	})
	res, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 5)
	must(t, err)
	if len(res.Started) != 2 || res.Waiting != 3 || !strings.Contains(res.Reason, "no host has capacity: 1 host") {
		t.Fatalf("scale 5 on 2 slots: %d started, %d waiting (%q)", len(res.Started), res.Waiting, res.Reason)
	}
	f.waitRunning(t, "demo", 2)
	// The reconciler brings the reason up to date.
	proctest.WaitFor(t, 10*time.Second, "3 waiting, 2/2 slots used", func() bool {
		st, err := f.reg.ScaleStatuses(f.ctx, "demo")
		return err == nil && len(st) == 1 && st[0].Waiting == 3 && strings.HasSuffix(st[0].Reason, "1 host, 2/2 slots used")
	})
	if got := len(f.running(t, "demo")); got != 2 {
		t.Fatalf("%d instances running on a host of capacity 2", got)
	}
	f.startAgent(t, "host-b", t.TempDir(), func(c *Config) { c.StopOnExit = true })
	all := f.waitRunning(t, "demo", 5)
	on := map[string]int{}
	for _, in := range all {
		on[in.Host]++
	}
	if on["host-a"] != 2 || on["host-b"] != 3 {
		t.Errorf("instances per host = %v, want host-a 2, host-b 3", on)
	}
	proctest.WaitFor(t, 10*time.Second, "the waiting status cleared", func() bool {
		st, err := f.reg.ScaleStatuses(f.ctx, "demo")
		return err == nil && len(st) == 0
	})
}

// TestAgentClaimsBurstInBatches: a burst of tickets reaches etcd in batches
// (several claims per round trip), and each claimed ticket still ends in a
// running instance on this host.
func TestAgentClaimsBurstInBatches(t *testing.T) {
	f := newFixture(t)
	// MaxParallel 8: one claim loop, so the burst queues behind it.
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true; c.MaxParallel = 8 })
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 30)
	must(t, err)
	for _, in := range f.waitRunning(t, "demo", 30) {
		if in.Host != "host-a" {
			t.Errorf("instance %s on %q", in.ID, in.Host)
		}
	}
	won, txns := testutil.ToFloat64(a.metrics.claimsWon), testutil.ToFloat64(a.metrics.claimBatches)
	lost := testutil.ToFloat64(a.metrics.leaseLost)
	t.Logf("%v claims in %v round trips, %v sessions lost", won, txns, lost)
	// A session lost on a loaded machine (keepalives starved) takes its
	// claims with it, and the next session claims those tickets again:
	// then more than 30 wins are right.
	if (lost == 0 && won != 30) || won < 30 || txns >= won {
		t.Errorf("claims won %v in %v transactions with %v sessions lost; want 30 (more only after a lost session) in fewer transactions", won, txns, lost)
	}
}

// TestAgentShutdownDuringStopKeepsTicket: an agent that shuts down while a
// stop ticket waits out the instance's stop timeout gives the ticket back
// without counting a failed attempt against its host, the only host that
// can do it; the agent's next run takes it again and the stop completes.
func TestAgentShutdownDuringStopKeepsTicket(t *testing.T) {
	f := newFixture(t)
	ready := filepath.Join(t.TempDir(), "ready")
	must(t, f.app("stubborn", "ignore-sigterm "+ready))
	p, err := f.reg.ProcType(f.ctx, "stubborn", "web")
	must(t, err)
	p.StopTimeout = registry.Duration(6 * time.Second)
	_, err = f.reg.SetProcType(f.ctx, p)
	must(t, err)
	dir := t.TempDir()
	a := f.startAgent(t, "host-a", dir, nil)
	_, err = f.reg.Scale(f.ctx, "stubborn", "v1", "web", 1)
	must(t, err)
	var in registry.Instance
	for _, only := range f.waitRunning(t, "stubborn", 1) {
		in = only
	}
	proctest.ReadFile(t, 10*time.Second, ready) // SIGTERM is ignored from now on
	st, err := f.reg.CreateTicket(f.ctx, registry.Ticket{Op: registry.TicketStop, Instance: in.ID})
	must(t, err)
	proctest.WaitFor(t, 10*time.Second, "the stop under way", func() bool {
		got, err := f.reg.Instance(f.ctx, in.ID)
		return err == nil && got.State == registry.InstanceStopping
	})
	a.stop(t) // within the stop timeout: the process ignores SIGTERM

	tk, err := f.reg.Ticket(f.ctx, st.ID)
	must(t, err)
	if tk.Attempts != 0 || tk.Excludes("host-a") || tk.Holder != "" {
		t.Fatalf("stop ticket after the shutdown = %+v; want it free, no attempt counted", tk)
	}
	f.startAgent(t, "host-a", dir, func(c *Config) { c.StopOnExit = true })
	proctest.WaitFor(t, 30*time.Second, "the stop done by the next run", func() bool {
		_, err := f.reg.Ticket(f.ctx, st.ID)
		got, ierr := f.reg.Instance(f.ctx, in.ID)
		return errors.Is(err, registry.ErrNotFound) && ierr == nil && got.State == registry.InstanceExited
	})
	if proctest.Alive(in.PID) {
		t.Errorf("pid %d still alive after its stop ticket completed", in.PID)
	}
	// The reconciler replaces the stopped instance (scale is still 1), and
	// the replacement ignores SIGTERM too: scale to 0 and wait for its
	// SIGKILL, so no workload outlives the test.
	_, err = f.reg.Scale(f.ctx, "stubborn", "v1", "web", 0)
	must(t, err)
	var pids []int
	proctest.WaitFor(t, 30*time.Second, "no stubborn instance live", func() bool {
		all, err := f.reg.AppInstances(f.ctx, "stubborn")
		if err != nil {
			return false
		}
		pids = pids[:0]
		for _, got := range all {
			if got.State.Live() || got.State == registry.InstanceStopping {
				return false
			}
			pids = append(pids, got.PID)
		}
		return true
	})
	for _, pid := range pids {
		proctest.WaitFor(t, 10*time.Second, "stopped process gone", func() bool { return pid == 0 || !proctest.Alive(pid) })
	}
}
