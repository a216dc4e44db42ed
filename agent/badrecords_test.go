package agent

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// logBuffer collects an agent's log lines for a test to count.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// count returns how many lines contain all of subs.
func (l *logBuffer) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// badRecordGauge returns visor_registry_bad_records by kind, as /metrics
// serves it.
func badRecordGauge(t *testing.T, a *Agent) map[string]float64 {
	t.Helper()
	fams, err := a.metrics.reg.Gather()
	must(t, err)
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "visor_registry_bad_records" {
			continue
		}
		for _, m := range f.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	return out
}

// One undecodable record under hosts/, instances/ or tickets/ must not stop
// the reconciler (issue 14 row 6), and an env key with "=" read from etcd
// is reported, never passed to a process (row 10). The reconciler still
// starts the instances of a desired scale written straight into etcd (no
// tickets: only its Rescale creates them); each bad key is logged once
// however many passes skip it, and counted on /metrics by kind.
func TestReconcilerSkipsBadRecords(t *testing.T) {
	f := newFixture(t)
	cli := f.reg.Client()
	p := f.reg.Prefix()
	must(t, f.reg.SetEnv(f.ctx, "demo", map[string]string{"GOOD": "1"}))
	bad := map[string]string{
		p + "hosts/x":                     "garbage",
		p + "instances/demo-web-bad":      "{",
		p + "tickets/0000000000000000bad": `{"op":"explode","app":"demo","rev":"v1","proc":"web","instance":"demo-web-x"}`,
		p + "apps/demo/env/PATH=/evil":    "x",
	}
	for k, v := range bad {
		_, err := cli.Put(f.ctx, k, v)
		must(t, err)
	}
	logs := &logBuffer{}
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) {
		c.StopOnExit = true
		c.ReconcileInterval = time.Second
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: "host-a", Level: hclog.Debug, Output: io.MultiWriter(testWriter{t}, logs)})
	})
	// A desired count with no tickets: only the reconciler acts on it.
	_, err := cli.Put(f.ctx, p+"apps/demo/scale/v1/web", "2")
	must(t, err)
	// (f.waitRunning would fail on the bad instance record listed.)
	var running []registry.Instance
	proctest.WaitFor(t, 30*time.Second, "2 running instances of demo", func() bool {
		insts, err := f.reg.AppInstances(f.ctx, "demo")
		if _, err := registry.Skipped(err); err != nil {
			t.Fatal(err)
		}
		running = running[:0]
		for _, in := range insts {
			if in.State == registry.InstanceRunning && proctest.Alive(in.PID) {
				running = append(running, in)
			}
		}
		return len(running) == 2
	})

	// The processes got the good env var, and nothing from "PATH=/evil".
	for _, in := range running {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", in.PID))
		must(t, err)
		vars := strings.Split(string(env), "\x00")
		if !contains(vars, "GOOD=1") {
			t.Errorf("instance %s lacks GOOD=1: %q", in.ID, vars)
		}
		for _, v := range vars {
			if strings.Contains(v, "evil") {
				t.Errorf("instance %s got %q from a bad env key", in.ID, v)
			}
		}
	}

	// Several more passes skip the same records: each is logged once.
	passes := logs.count("reconcile pass")
	proctest.WaitFor(t, 30*time.Second, "three more reconcile passes", func() bool {
		return logs.count("reconcile pass") >= passes+3
	})
	for k := range bad {
		if n := logs.count("skipping a registry record", k); n != 1 {
			t.Errorf("%s logged %d times, want once", k, n)
		}
	}
	if n := logs.count("doing nothing"); n != 0 {
		t.Errorf("the reconciler stopped %d times", n)
	}
	want := map[string]float64{registry.KindHost: 1, registry.KindInstance: 1, registry.KindTicket: 1, registry.KindEnv: 1, registry.KindApp: 0}
	got := badRecordGauge(t, a.Agent)
	for kind, n := range want {
		if got[kind] != n {
			t.Errorf("visor_registry_bad_records{kind=%q} = %v, want %v (all: %v)", kind, got[kind], n, got)
		}
	}

	// Fixed records stop being counted at the next pass.
	_, err = cli.Delete(f.ctx, p+"instances/demo-web-bad")
	must(t, err)
	proctest.WaitFor(t, 30*time.Second, "the deleted record no longer counted", func() bool {
		return badRecordGauge(t, a.Agent)[registry.KindInstance] == 0
	})
	if n := logs.count("no longer skipped", p+"instances/demo-web-bad"); n != 1 {
		t.Errorf("fix logged %d times, want once", n)
	}
	a.stop(t)
}
