package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

func TestMain(m *testing.M) {
	proctest.Main()
	code := m.Run()
	e2etest.Cleanup()
	os.Exit(code)
}

// cluster is one test's fleet: an embedded etcd, a registry client on a
// prefix of its own, and agent subprocesses.
type cluster struct {
	t      *testing.T
	etcd   *etcdtest.Cluster
	reg    *registry.Registry
	prefix string
	runID  string
	ctx    context.Context
	bin    string

	mu     sync.Mutex
	agents map[string]*agentProc
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	bin := e2etest.VisorBinary(t)
	e := etcdtest.New(t)
	prefix := etcdtest.Prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(10*time.Minute))
	t.Cleanup(cancel)
	c := &cluster{
		t:      t,
		etcd:   e,
		reg:    registry.New(e.Client(t), prefix, hclog.NewNullLogger()),
		prefix: prefix,
		runID:  strconv.FormatInt(time.Now().UnixNano(), 36),
		ctx:    ctx,
		bin:    bin,
		agents: map[string]*agentProc{},
	}
	// Registered first, so it runs last: no workload outlives the test.
	t.Cleanup(c.killWorkloads)
	return c
}

// app registers an app whose proc "web" runs /bin/sleep: a real process
// that costs little, so hundreds fit on a small machine. The agent gives it
// VISOR_INSTANCE, and the app env VISOR_E2E, which is how workloads finds it.
func (c *cluster) app(name string) {
	c.t.Helper()
	ctx := c.ctx
	must(c.t, err2(c.reg.RegisterApp(ctx, registry.App{Name: name})))
	must(c.t, c.reg.SetEnv(ctx, name, map[string]string{"VISOR_E2E": c.runID, proctest.EnvVar: "1"}))
	must(c.t, err2(c.reg.RegisterRevision(ctx, registry.Revision{App: name, Name: "v1", Dir: os.TempDir()})))
	must(c.t, err2(c.reg.SetProcType(ctx, registry.ProcType{
		App:         name,
		Name:        "web",
		Command:     "exec sleep 3600",
		StopTimeout: registry.Duration(3 * time.Second),
	})))
}

func err2[T any](_ T, err error) error { return err }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// agentProc is one `visor agent` subprocess.
type agentProc struct {
	host    string
	dataDir string
	args    []string
	cmd     *exec.Cmd
	done    chan struct{}
	log     *bytes.Buffer
	logMu   *sync.Mutex
}

// startAgent starts `visor agent` for host with its state in dataDir
// (reused across restarts of the same host).
func (c *cluster) startAgent(host string, extra ...string) *agentProc {
	c.t.Helper()
	c.mu.Lock()
	prev := c.agents[host]
	c.mu.Unlock()
	dataDir := filepath.Join(c.t.TempDir(), host)
	if prev != nil {
		dataDir = prev.dataDir
	}
	args := append([]string{"agent",
		"--endpoints", strings.Join(c.etcd.Endpoints(), ","),
		"--prefix", c.prefix,
		"-host", host,
		"-data-dir", dataDir,
		"-run-dir", filepath.Join(dataDir, "run"),
		"-http-addr", "off",
		"-ttl", testtime.Scaled(5 * time.Second).String(),
		"-cgroups", "none",
		"-log-level", "debug",
		"-allow-root-instances", // the test's proc types have no user
		// Slots enough for every test on any machine (the automatic
		// capacity depends on its memory); extra may set a smaller one.
		"-capacity", "1000",
	}, extra...)
	a := &agentProc{host: host, dataDir: dataDir, args: args, log: &bytes.Buffer{}, logMu: &sync.Mutex{}, done: make(chan struct{})}
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "VISOR_E2E="+c.runID)
	stderr, err := cmd.StderrPipe()
	must(c.t, err)
	must(c.t, cmd.Start())
	a.cmd = cmd
	go func() {
		defer close(a.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			a.logMu.Lock()
			a.log.WriteString(sc.Text() + "\n")
			a.logMu.Unlock()
		}
		_ = cmd.Wait()
	}()
	c.mu.Lock()
	c.agents[host] = a
	c.mu.Unlock()
	c.t.Cleanup(func() {
		a.signal(syscall.SIGTERM)
		a.wait(c.t, e2etest.AgentExitWait)
		if c.t.Failed() {
			a.logMu.Lock()
			c.t.Logf("agent %s log:\n%s", host, a.log.String())
			a.logMu.Unlock()
		}
	})
	return a
}

func (a *agentProc) signal(sig syscall.Signal) {
	if a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(sig)
	}
}

// wait waits for the agent process to exit and reports whether it did; d
// is scaled by testtime.
func (a *agentProc) wait(t testing.TB, d time.Duration) bool {
	d = testtime.Scaled(d)
	select {
	case <-a.done:
		return true
	case <-time.After(d):
		t.Errorf("agent %s did not exit within %s", a.host, d)
		_ = a.cmd.Process.Kill()
		<-a.done
		return false
	}
}

// exitCode returns the agent's exit code once it has exited.
func (a *agentProc) exitCode() int {
	<-a.done
	return a.cmd.ProcessState.ExitCode()
}

// workloads scans /proc for this run's instance processes: instance id ->
// pids. Only processes whose environment carries VISOR_E2E=<run id> and a
// VISOR_INSTANCE count.
func (c *cluster) workloads() map[string][]int {
	return e2etest.Workloads(c.runID)
}

// killWorkloads kills every process of this run that is still alive.
func (c *cluster) killWorkloads() {
	for _, pids := range c.workloads() {
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// running returns the registry's running instances of app, by id.
func (c *cluster) running(app string) map[string]registry.Instance {
	insts, err := c.reg.AppInstances(c.ctx, app)
	if err != nil {
		return nil
	}
	out := map[string]registry.Instance{}
	for _, in := range insts {
		if in.State == registry.InstanceRunning {
			out[in.ID] = in
		}
	}
	return out
}

// waitSettled waits until app has exactly n running instances in the
// registry, each with exactly one live process whose pid matches.
func (c *cluster) waitSettled(app string, n int, timeout time.Duration) map[string]registry.Instance {
	c.t.Helper()
	return c.waitSettledIn(c.t, app, n, timeout)
}

// waitSettledIn is waitSettled failing t, for a subtest (a subtest must
// not fail its parent: FailNow on the parent ends the subtest's goroutine
// with a confusing "panic(nil) or runtime.Goexit").
func (c *cluster) waitSettledIn(t *testing.T, app string, n int, timeout time.Duration) map[string]registry.Instance {
	t.Helper()
	var got map[string]registry.Instance
	var why string
	timeout = testtime.Scaled(timeout)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		got = c.running(app)
		if why = c.settledProblem(got, n); why == "" {
			return got
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s not settled at %d after %s: %s", app, n, timeout, why)
		case <-tick.C:
		}
	}
}

func (c *cluster) settledProblem(got map[string]registry.Instance, n int) string {
	if len(got) != n {
		return fmt.Sprintf("%d running in registry", len(got))
	}
	procs := c.workloads()
	for id, in := range got {
		pids := procs[id]
		if len(pids) != 1 {
			return fmt.Sprintf("instance %s has %d processes", id, len(pids))
		}
		if pids[0] != in.PID {
			return fmt.Sprintf("instance %s: registry pid %d, process %d", id, in.PID, pids[0])
		}
	}
	return ""
}
