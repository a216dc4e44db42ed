package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// devAgent is a `visor agent -dev` subprocess, as `make run` starts it.
type devAgent struct {
	cmd    *exec.Cmd
	exited chan error
	log    *strings.Builder
	ep     string
	bin    string
}

// startDev starts a dev agent with its embedded etcd on free ports; its
// temporary directories go under tmp. extra are more agent flags.
func startDev(t *testing.T, bin, tmp string, extra ...string) *devAgent {
	t.Helper()
	cport, pport := freePort(t), freePort(t)
	args := append([]string{"agent", "-dev",
		"-dev-client-url", fmt.Sprintf("http://127.0.0.1:%d", cport),
		"-dev-peer-url", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"-http-addr", "127.0.0.1:0", "-cgroups", "none"}, extra...)
	d := &devAgent{cmd: exec.Command(bin, args...), exited: make(chan error, 1), log: &strings.Builder{},
		ep: fmt.Sprintf("127.0.0.1:%d", cport), bin: bin}
	d.cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	d.cmd.Stderr = d.log
	must(t, d.cmd.Start())
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.exited == nil {
			return
		}
		_ = d.cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			t.Logf("dev agent log:\n%s", d.log.String())
		}
	})
	proctest.WaitFor(t, 60*time.Second, "the dev agent's etcd and host record", func() bool {
		out, err := d.visor("hosts")
		return err == nil && strings.Count(out, "\n") >= 2
	})
	return d
}

func (d *devAgent) visor(args ...string) (string, error) {
	out, err := exec.Command(d.bin, append([]string{"--endpoints", d.ep}, args...)...).CombinedOutput()
	return string(out), err
}

// interrupt sends SIGINT (Ctrl-C) and waits for the agent to exit cleanly.
func (d *devAgent) interrupt(t *testing.T) {
	t.Helper()
	must(t, d.cmd.Process.Signal(syscall.SIGINT))
	select {
	case err := <-d.exited:
		d.exited = nil
		if err != nil {
			t.Fatalf("dev agent exit after SIGINT: %v\n%s", err, d.log.String())
		}
	case <-time.After(testtime.Scaled(e2etest.AgentExitWait)):
		t.Fatalf("dev agent still running %v after SIGINT\n%s", testtime.Scaled(e2etest.AgentExitWait), d.log.String())
	}
}

// runDemo registers app demo running three workloads of this run.
func (d *devAgent) runDemo(t *testing.T, runID string, n int) {
	t.Helper()
	for _, s := range [][]string{
		{"app", "create", "demo"},
		{"env", "set", "demo", "VISOR_E2E=" + runID, "VISOR_PROCTEST=1"},
		{"rev", "register", "demo", "v1", "--dir", filepath.Dir(d.bin)},
		{"proc", "set", "demo", "web", "--command", "exec " + selfCommand("sleep", "1h")},
		{"scale", "demo", "v1", fmt.Sprintf("web=%d", n), "--wait", "--wait-timeout", "60s"},
	} {
		if out, err := d.visor(s...); err != nil {
			t.Fatalf("visor %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
}

// TestDevModeOwnsItsWorld (issue 17, item 2): Ctrl-C on `make run` left
// instances running that the next `make run`, with a fresh registry, could
// neither see nor stop. The dev agent now stops its instances on exit: after
// SIGINT no process of its instances is left, and a second dev start finds
// none it does not know. With a data dir of its own and
// --stop-on-exit=false it keeps them, and the next start re-adopts them
// (same pids, running in its registry).
func TestDevModeOwnsItsWorld(t *testing.T) {
	bin := e2etest.VisorBinary(t)
	c := &cluster{t: t, runID: fmt.Sprint(time.Now().UnixNano())}
	t.Cleanup(c.killWorkloads)

	t.Run("stops its instances on exit", func(t *testing.T) {
		tmp := t.TempDir()
		d := startDev(t, bin, tmp)
		d.runDemo(t, c.runID, 3)
		if n := len(c.workloads()); n != 3 {
			t.Fatalf("%d workload processes, want 3", n)
		}
		d.interrupt(t)
		if left := c.workloads(); len(left) != 0 {
			t.Fatalf("after SIGINT, instance processes left running: %v", left)
		}
		// Its temporary data dir (registry, logs) went with it: every
		// `make run` used to leave ~60 MB in $TMPDIR.
		if left, _ := filepath.Glob(filepath.Join(tmp, "visor-dev-*")); len(left) != 0 {
			t.Fatalf("after SIGINT, the dev agent's temporary data dir is left: %v", left)
		}
		d2 := startDev(t, bin, tmp)
		if left := c.workloads(); len(left) != 0 {
			t.Fatalf("second dev start: processes no registry knows: %v", left)
		}
		if out, err := d2.visor("ps"); err != nil || strings.Contains(out, "running") {
			t.Fatalf("second dev start: ps = %v\n%s", err, out)
		}
		d2.interrupt(t)
	})

	t.Run("second on its addresses", func(t *testing.T) {
		d := startDev(t, bin, t.TempDir())
		tmp := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(time.Minute))
		defer cancel()
		second := exec.CommandContext(ctx, bin, d.cmd.Args[1:]...)
		second.Env = append(os.Environ(), "TMPDIR="+tmp)
		out, err := second.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "is another `visor agent -dev` or an etcd running here?") {
			t.Fatalf("a second dev agent on the first one's addresses: %v; want a failure naming the likely cause:\n%s", err, out)
		}
		if left, _ := filepath.Glob(filepath.Join(tmp, "visor-dev-*")); len(left) != 0 {
			t.Fatalf("the failed dev agent left its temporary data dir: %v", left)
		}
		d.interrupt(t)
	})

	t.Run("keeps them with its own data dir and re-adopts", func(t *testing.T) {
		tmp, data := t.TempDir(), t.TempDir()
		d := startDev(t, bin, tmp, "-data-dir", data, "-stop-on-exit=false")
		d.runDemo(t, c.runID+"-keep", 2)
		before := e2etest.Workloads(c.runID + "-keep")
		d.interrupt(t)
		if _, err := os.Stat(filepath.Join(data, "lease")); err != nil {
			t.Fatalf("a data dir given with -data-dir must outlive the agent: %v", err)
		}
		if after := e2etest.Workloads(c.runID + "-keep"); len(after) != 2 {
			t.Fatalf("kept instances: %v, want the 2 of %v", after, before)
		}
		d2 := startDev(t, bin, tmp, "-data-dir", data, "-stop-on-exit=false")
		proctest.WaitFor(t, 60*time.Second, "the 2 kept instances running in the second dev agent's registry", func() bool {
			out, err := d2.visor("ps", "demo")
			return err == nil && strings.Count(out, "running") == 2
		})
		if after := e2etest.Workloads(c.runID + "-keep"); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("re-adoption changed the processes: %v, before %v", after, before)
		}
		// Its own registry knows them: scaling to 0 stops them.
		if out, err := d2.visor("scale", "demo", "v1", "web=0", "--wait", "--wait-timeout", "60s"); err != nil {
			t.Fatalf("scale to 0: %v\n%s", err, out)
		}
		proctest.WaitFor(t, 30*time.Second, "no kept instance left", func() bool {
			return len(e2etest.Workloads(c.runID+"-keep")) == 0
		})
		d2.interrupt(t)
	})
}
