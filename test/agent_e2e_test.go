package test

import (
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

func TestThreeAgentsRun300InstancesExactlyOnce(t *testing.T) {
	c := newCluster(t)
	c.app("fleet")
	hosts := []string{"host-a", "host-b", "host-c"}
	for _, h := range hosts {
		c.startAgent(h)
	}
	// Spreading is what this test checks, so the three hosts must be live
	// when the tickets come: a host ranks the tickets among the hosts it
	// knows then, and one that registers later finds them claimed (under
	// load, the first host once claimed all 300 before the others had
	// registered; that is placement working, not a lost claim).
	waitRegistered(t, c, hosts...)
	_, err := c.reg.Scale(c.ctx, "fleet", "v1", "web", 300)
	must(t, err)
	got := c.waitSettled("fleet", 300, 3*time.Minute)
	perHost := map[string]int{}
	for _, in := range got {
		perHost[in.Host]++
	}
	t.Logf("instances per host: %v", perHost)
	if len(perHost) < 2 {
		t.Errorf("300 instances landed on %d host(s); claims should spread", len(perHost))
	}
	ts, err := c.reg.Tickets(c.ctx)
	must(t, err)
	if len(ts) != 0 {
		t.Errorf("%d tickets left after settling", len(ts))
	}

	_, err = c.reg.Scale(c.ctx, "fleet", "v1", "web", 0)
	must(t, err)
	c.waitSettled("fleet", 0, 2*time.Minute)
	waitNoWorkloads(t, c, time.Minute)
}

func waitNoWorkloads(t *testing.T, c *cluster, d time.Duration) {
	t.Helper()
	proctest.WaitFor(t, d, "no workload process left", func() bool { return len(c.workloads()) == 0 })
}

func TestKill9AndRestartWithinTTLKeepsInstances(t *testing.T) {
	c := newCluster(t)
	c.app("sticky")
	// A TTL that the restart below fits in even when the machine stalls
	// (starting the agent binary can take seconds under load).
	ttl := testtime.Scaled(30 * time.Second).String()
	a := c.startAgent("host-a", "-ttl", ttl)
	_, err := c.reg.Scale(c.ctx, "sticky", "v1", "web", 5)
	must(t, err)
	before := c.waitSettled("sticky", 5, time.Minute)

	a.signal(syscall.SIGKILL)
	a.wait(t, 5*time.Second)
	c.startAgent("host-a", "-ttl", ttl) // well inside the TTL
	// Let the new agent register and adopt, then compare.
	var after map[string]registry.Instance
	proctest.WaitFor(t, 30*time.Second, "host-a back with 5 running instances", func() bool {
		after = c.running("sticky")
		return c.settledProblem(after, 5) == "" && hostRegistered(c, "host-a")
	})
	for id, in := range before {
		got, ok := after[id]
		if !ok || got.PID != in.PID {
			t.Fatalf("instance %s: pid %d before, %+v after", id, in.PID, got)
		}
		if n := got.Restarts["fail"] + got.Restarts["oom"]; n != 0 {
			t.Fatalf("instance %s restarted %d times", id, n)
		}
	}
	if n := len(c.workloads()); n != 5 {
		t.Fatalf("%d workload processes, want 5 (no duplicates)", n)
	}
}

// waitRegistered waits until every one of hosts is registered.
func waitRegistered(t *testing.T, c *cluster, hosts ...string) {
	t.Helper()
	proctest.WaitFor(t, time.Minute, "hosts "+strings.Join(hosts, ", ")+" registered", func() bool {
		for _, h := range hosts {
			if !hostRegistered(c, h) {
				return false
			}
		}
		return true
	})
}

// hostRegistered reports whether host is registered (has a live lease).
func hostRegistered(c *cluster, host string) bool {
	_, err := c.reg.Host(c.ctx, host)
	return err == nil
}

func TestEtcdOutageKeepsProcessesRunning(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s etcd outage; skipped in -short")
	}
	c := newCluster(t)
	c.app("steady")
	c.startAgent("host-a")
	c.startAgent("host-b")
	_, err := c.reg.Scale(c.ctx, "steady", "v1", "web", 6)
	must(t, err)
	before := c.waitSettled("steady", 6, time.Minute)

	c.etcd.Stop()
	outage := time.NewTimer(30 * time.Second)
	<-outage.C
	procs := c.workloads()
	for id, in := range before {
		if len(procs[id]) != 1 || procs[id][0] != in.PID {
			t.Fatalf("during the outage instance %s has processes %v, want [%d]", id, procs[id], in.PID)
		}
	}
	c.etcd.Start()
	back := time.Now()
	after := c.waitSettled("steady", 6, 30*time.Second)
	t.Logf("registry right again %s after etcd returned", time.Since(back).Round(10*time.Millisecond))
	for id, in := range before {
		if after[id].PID != in.PID {
			t.Errorf("instance %s: pid %d before the outage, %d after", id, in.PID, after[id].PID)
		}
	}
}

func TestSIGTERMLeavesInstancesRunning(t *testing.T) {
	c := newCluster(t)
	c.app("calm")
	a := c.startAgent("host-a")
	_, err := c.reg.Scale(c.ctx, "calm", "v1", "web", 2)
	must(t, err)
	before := c.waitSettled("calm", 2, time.Minute)
	start := time.Now()
	a.signal(syscall.SIGTERM)
	if !a.wait(t, e2etest.AgentExitWait) {
		return
	}
	t.Logf("agent exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	if code := a.exitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	procs := c.workloads()
	for id, in := range before {
		if len(procs[id]) != 1 || procs[id][0] != in.PID {
			t.Errorf("instance %s: processes %v after agent exit, want [%d]", id, procs[id], in.PID)
		}
	}
}

// TestDevAgentWithCLI is a newcomer's first session: `visor agent -dev`
// and the CLI against it.
func TestDevAgentWithCLI(t *testing.T) {
	bin := e2etest.VisorBinary(t)
	c := &cluster{t: t, runID: fmt.Sprint(time.Now().UnixNano())}
	t.Cleanup(c.killWorkloads)
	cport, pport := freePort(t), freePort(t)
	dir := t.TempDir()
	dev := exec.Command(bin, "agent", "-dev",
		"-dev-client-url", fmt.Sprintf("http://127.0.0.1:%d", cport),
		"-dev-peer-url", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"-data-dir", dir, "-http-addr", "127.0.0.1:0", "-cgroups", "none", "-stop-on-exit")
	var devLog strings.Builder
	dev.Stderr = &devLog
	must(t, dev.Start())
	exited := make(chan error, 1)
	go func() { exited <- dev.Wait() }()
	t.Cleanup(func() {
		_ = dev.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(testtime.Scaled(e2etest.AgentExitWait)):
			_ = dev.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("dev agent log:\n%s", devLog.String())
		}
	})
	ep := fmt.Sprintf("127.0.0.1:%d", cport)
	visor := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--endpoints", ep}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	proctest.WaitFor(t, 60*time.Second, "the dev agent's etcd to answer", func() bool {
		_, err := visor("app", "list")
		return err == nil
	})
	steps := [][]string{
		{"app", "create", "demo"},
		{"env", "set", "demo", "VISOR_E2E=" + c.runID, "VISOR_PROCTEST=1"},
		{"rev", "register", "demo", "v1", "--dir", filepath.Dir(bin)},
		{"proc", "set", "demo", "web", "--command", "exec " + selfCommand("sleep", "1h")},
		{"scale", "demo", "v1", "web=3", "--wait", "--wait-timeout", "60s"},
	}
	for _, s := range steps {
		if out, err := visor(s...); err != nil {
			t.Fatalf("visor %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	out, err := visor("ps", "demo")
	if err != nil || strings.Count(out, "running") != 3 {
		t.Fatalf("visor ps demo: %v\n%s", err, out)
	}
	if n := len(c.workloads()); n != 3 {
		t.Fatalf("%d workload processes, want 3", n)
	}
	if out, err := visor("scale", "demo", "v1", "web=1", "--wait", "--wait-timeout", "60s"); err != nil {
		t.Fatalf("scale down: %v\n%s", err, out)
	}
	proctest.WaitFor(t, 30*time.Second, "one workload process after scale to 1", func() bool { return len(c.workloads()) == 1 })

	// Logs and signals go through the instance's agent. The ticker process
	// type ships in a new release (v1 was released without it).
	for _, s := range [][]string{
		{"proc", "set", "demo", "ticker", "--command", "exec " + selfCommand("tick", "50ms")},
		{"rev", "register", "demo", "v2", "--from", "v1"},
		{"scale", "demo", "v2", "ticker=1", "--wait", "--wait-timeout", "60s"},
	} {
		if out, err := visor(s...); err != nil {
			t.Fatalf("visor %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	out, err = visor("ps", "demo", "-o", "json")
	if err != nil {
		t.Fatalf("ps -o json: %v\n%s", err, out)
	}
	var ps []struct {
		ID    string `json:"id"`
		Proc  string `json:"proc"`
		State string `json:"state"`
	}
	must(t, json.Unmarshal([]byte(out), &ps))
	var ticker string
	for _, p := range ps {
		if p.Proc == "ticker" && p.State == "running" {
			ticker = p.ID
		}
	}
	if ticker == "" {
		t.Fatalf("no running ticker in %s", out)
	}
	proctest.WaitFor(t, 20*time.Second, "ticker output through visor logs", func() bool {
		out, err := visor("logs", ticker, "--tail", "3")
		return err == nil && strings.Count(out, "tick ") == 3
	})
	if out, err := visor("signal", ticker, "STOP"); err != nil || !strings.Contains(out, "sent STOP") {
		t.Fatalf("visor signal STOP: %v\n%s", err, out)
	}
	if out, err := visor("signal", ticker, "CONT"); err != nil {
		t.Fatalf("visor signal CONT: %v\n%s", err, out)
	}
	if out, err := visor("signal", ticker, "BOGUS"); err == nil || !strings.Contains(out, "BOGUS") {
		t.Fatalf("visor signal BOGUS: want an error naming the signal, got %v\n%s", err, out)
	}
	if out, err := visor("logs", "demo-web-00000000"); err == nil || !strings.Contains(out, "not found") {
		t.Fatalf("visor logs of an unknown instance: %v\n%s", err, out)
	}

	// Restart in place: a new process on the same host, one manual restart.
	before := c.workloads()
	out, err = visor("restart", ticker, "--wait", "--wait-timeout", "60s", "-o", "json")
	if err != nil {
		t.Fatalf("visor restart --wait: %v\n%s", err, out)
	}
	var restarted []struct {
		Instance, Op, Ticket, Host, State string
		PID                               int
	}
	must(t, json.Unmarshal([]byte(out), &restarted))
	if len(restarted) != 1 || restarted[0].Instance != ticker || restarted[0].Op != "restart" ||
		restarted[0].State != "running" || restarted[0].PID == 0 {
		t.Fatalf("visor restart -o json: %s", out)
	}
	for _, pids := range before {
		for _, pid := range pids {
			if pid == restarted[0].PID {
				t.Fatalf("restart kept pid %d", pid)
			}
		}
	}
	out, err = visor("ps", "demo", "-o", "json")
	if err != nil || !strings.Contains(out, `"manual": 1`) {
		t.Fatalf("ps after restart: want a manual restart counted: %v\n%s", err, out)
	}

	// Stop one instance: it exits, and the reconciler starts a replacement
	// (the scale stays 1).
	if out, err := visor("stop", ticker, "--wait", "--wait-timeout", "60s"); err != nil || !strings.Contains(out, "exited") {
		t.Fatalf("visor stop --wait: %v\n%s", err, out)
	}
	proctest.WaitFor(t, 60*time.Second, "a replacement ticker running", func() bool {
		out, err := visor("ps", "demo", "-o", "json")
		if err != nil {
			return false
		}
		var list []struct{ ID, Proc, State string }
		if json.Unmarshal([]byte(out), &list) != nil {
			return false
		}
		for _, p := range list {
			if p.Proc == "ticker" && p.State == "running" && p.ID != ticker {
				return true
			}
		}
		return false
	})
	// Bad input: unknown instances and no instance at all.
	if out, err := visor("restart", "demo-web-00000000"); err == nil || !strings.Contains(out, "not found") {
		t.Fatalf("visor restart of an unknown instance: %v\n%s", err, out)
	}
	if out, err := visor("stop", ticker); err == nil || !strings.Contains(out, ticker) {
		t.Fatalf("visor stop of a stopped instance: want an error naming it, got %v\n%s", err, out)
	}
}

// selfCommand is the shell line that runs this test binary as workload.
func selfCommand(workload string, args ...string) string {
	return strings.Join(proctest.Command(workload, args...), " ")
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
