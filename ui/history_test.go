package ui

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

func TestRingKeepsTheLastN(t *testing.T) {
	r := newRing[int](3)
	if got := r.items(); len(got) != 0 {
		t.Fatalf("empty ring holds %v", got)
	}
	r.push(1)
	r.push(2)
	if got := r.items(); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("ring of 2 pushes holds %v, want [1 2]", got)
	}
	for i := 3; i <= 7; i++ {
		r.push(i)
	}
	got := r.items()
	if !slices.Equal(got, []int{5, 6, 7}) {
		t.Fatalf("ring of 3 after pushing 1..7 holds %v, want [5 6 7]", got)
	}
	got[0] = 99 // a copy: the ring is unchanged
	if r.items()[0] != 5 {
		t.Fatal("items returned the ring's own buffer")
	}
	one := newRing[int](0) // at least one slot
	one.push(1)
	one.push(2)
	if got := one.items(); !slices.Equal(got, []int{2}) {
		t.Fatalf("ring of size 0 (1) holds %v", got)
	}
}

func values(ps []Point) []float64 {
	out := make([]float64, len(ps))
	for i, p := range ps {
		out[i] = p.V
	}
	return out
}

// TestHistorySamplesAreBounded feeds a history by hand: per app the
// running instances, per host load and memory with a gap while the host
// is gone, the window bounded by Samples, and a series that stays empty
// over its whole window dropped.
func TestHistorySamplesAreBounded(t *testing.T) {
	h := NewHistory(HistoryConfig{Samples: 3})
	t0 := time.Now()
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * 10 * time.Second) }
	h.list([]registry.Instance{
		{ID: "a-1", App: "a", State: registry.InstanceRunning, ModRevision: 5},
		{ID: "a-2", App: "a", State: registry.InstancePending, ModRevision: 5},
		{ID: "b-1", App: "b", State: registry.InstanceRunning, ModRevision: 5},
	})
	h.setHosts([]registry.Host{{ID: "h1", Load: registry.HostLoad{Load1: 0.5, MemUsedPercent: 40}}})
	h.sample(at(0))
	h.apply(registry.Event{Revision: 6, Type: registry.InstanceChanged, Instance: "a-2", App: "a", State: registry.InstanceRunning}, at(1))
	h.apply(registry.Event{Revision: 7, Type: registry.InstanceDeleted, Instance: "b-1", Deleted: true}, at(1))
	h.setHosts(nil) // h1 gone
	h.sample(at(1))
	h.setHosts([]registry.Host{{ID: "h1", Load: registry.HostLoad{Load1: 1.5, MemUsedPercent: 60}}})
	h.sample(at(2))
	if got := values(h.AppRunning("b")); !slices.Equal(got, []float64{1, 0, 0}) {
		t.Fatalf("app b running = %v, want [1 0 0] after its instance went", got)
	}
	h.sample(at(3)) // b's window now holds only zeros and b has no instance
	if got := values(h.AppRunning("a")); !slices.Equal(got, []float64{2, 2, 2}) {
		t.Fatalf("app a running = %v, want [2 2 2] (the last 3 samples)", got)
	}
	load, mem := h.HostLoad("h1")
	if len(load) != 3 || !math.IsNaN(load[0].V) || load[1].V != 1.5 || mem[2].V != 60 {
		t.Fatalf("h1 load %v mem %v: want a gap, then 1.5 and 60", values(load), values(mem))
	}
	if !load[2].T.Equal(at(3)) {
		t.Fatalf("last load sample at %v, want %v", load[2].T, at(3))
	}
	h.sample(at(4))
	if got := h.AppRunning("b"); got != nil {
		t.Fatalf("app b's series kept after a window of nothing: %v", got)
	}
	if got := h.Apps(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("apps with a series: %v", got)
	}
	running, hosts, ok := h.Now()
	if !ok || running["a"] != 2 || len(running) != 1 || hosts["h1"].Load1 != 1.5 {
		t.Fatalf("Now: running %v hosts %v ok %v; want a: 2 and h1's load 1.5", running, hosts, ok)
	}
	if _, _, ok := NewHistory(HistoryConfig{}).Now(); ok {
		t.Fatal("Now of a history that never listed reports ok")
	}
}

// TestHistoryTransitions checks the per-instance state history: the
// listed state first, each change once, an event older than the list
// ignored, the bound, and the history gone with the instance.
func TestHistoryTransitions(t *testing.T) {
	h := NewHistory(HistoryConfig{Transitions: 3})
	since := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	h.list([]registry.Instance{{ID: "x-1", App: "x", State: registry.InstanceStarting, Since: since, ModRevision: 10}})
	now := since.Add(time.Minute)
	h.apply(registry.Event{Revision: 9, Type: registry.InstanceChanged, Instance: "x-1", App: "x", State: registry.InstancePending}, now)
	h.apply(registry.Event{Revision: 11, Type: registry.InstanceChanged, Instance: "x-1", App: "x", State: registry.InstanceRunning, Time: since.Add(time.Second)}, now)
	h.apply(registry.Event{Revision: 12, Type: registry.InstanceChanged, Instance: "x-1", App: "x", State: registry.InstanceRunning}, now)
	h.apply(registry.Event{Revision: 13, Type: registry.InstanceChanged, Instance: "x-1", App: "x", State: registry.InstanceBackoff, Reason: "exit code 3"}, now)
	tr := h.Transitions("x-1")
	want := []Transition{
		{State: registry.InstanceStarting, At: since},
		{State: registry.InstanceRunning, At: since.Add(time.Second)},
		{State: registry.InstanceBackoff, At: now, Reason: "exit code 3"},
	}
	if !slices.Equal(tr, want) {
		t.Fatalf("transitions %+v\nwant %+v", tr, want)
	}
	h.apply(registry.Event{Revision: 14, Type: registry.InstanceChanged, Instance: "x-1", App: "x", State: registry.InstanceStarting}, now)
	if tr := h.Transitions("x-1"); len(tr) != 3 || tr[0].State != registry.InstanceRunning {
		t.Fatalf("bounded to 3, the oldest dropped: %+v", tr)
	}
	h.apply(registry.Event{Revision: 15, Type: registry.InstanceDeleted, Instance: "x-1", Deleted: true}, now)
	if tr := h.Transitions("x-1"); tr != nil {
		t.Fatalf("history of a deleted instance kept: %+v", tr)
	}
}

// TestHistoryRunFollowsTheRegistry runs a history against a real etcd:
// instances that exist when it starts and ones made and changed after are
// in it, with the reason of a change, and Run returns with its context.
func TestHistoryRunFollowsTheRegistry(t *testing.T) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	if _, err := f.reg.Scale(ctx, "demo", "v1", "web", 1); err != nil {
		t.Fatal(err)
	}
	h := NewHistory(HistoryConfig{Registry: f.reg, Interval: time.Hour})
	events := make(chan registry.Event, 100)
	h.applied = func(ev registry.Event) {
		select {
		case events <- ev:
		default:
		}
	}
	listed := make(chan struct{}, 1)
	h.listed = func() {
		select {
		case listed <- struct{}{}:
		default:
		}
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { h.Run(rctx) })
	defer func() { stop(); wg.Wait() }()
	// Wait for Run's first listing: what happens after it must reach the
	// history as events (a listing made after the MarkLost below would
	// see the instance lost from the start).
	select {
	case <-listed:
	case <-time.After(testtime.Scaled(30 * time.Second)):
		t.Fatal("the history did not list the instances")
	}

	// The sample Run takes after its list shows the app (none running).
	res, err := f.reg.Scale(ctx, "demo", "v1", "web", 2)
	if err != nil {
		t.Fatal(err)
	}
	insts, err := f.reg.Instances(ctx)
	if err != nil || len(insts) != 2 {
		t.Fatalf("instances after scaling to 2: %d, %v (scale %+v)", len(insts), err, res)
	}
	id := insts[1].ID
	if err := f.reg.MarkLost(ctx, id, "host <gone>"); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(testtime.Scaled(30 * time.Second))
	for {
		select {
		case ev := <-events:
			if ev.Instance != id || ev.State != registry.InstanceLost {
				continue
			}
		case <-deadline:
			t.Fatalf("the history did not see %s lost; it has %+v", id, h.Transitions(id))
		}
		break
	}
	tr := h.Transitions(id)
	if len(tr) == 0 || tr[len(tr)-1].State != registry.InstanceLost || !strings.Contains(tr[len(tr)-1].Reason, "host <gone>") {
		t.Fatalf("transitions of %s: %+v, want the last lost with the reason", id, tr)
	}
	if tr[0].State != registry.InstancePending {
		t.Fatalf("first transition of %s: %+v, want pending", id, tr[0])
	}
	if got := h.AppRunning("demo"); len(got) == 0 || got[0].V != 0 {
		t.Fatalf("demo's running series after start: %v", got)
	}
	if h.Since().IsZero() {
		t.Fatal("Since is zero after Run listed")
	}
}

// TestPagesShowChartsAndStateHistory checks where the history shows: an
// app chart on the overview and the app page, load and memory charts on
// the host page, the state history with its reason on the instance page.
func TestPagesShowChartsAndStateHistory(t *testing.T) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	if _, err := f.reg.Scale(ctx, "demo", "v1", "web", 1); err != nil {
		t.Fatal(err)
	}
	insts, err := f.reg.Instances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := f.reg.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := insts[0].ID
	f.hist.list(insts)
	f.hist.setHosts(hosts)
	f.hist.sample(time.Now())
	f.hist.apply(registry.Event{Revision: insts[0].ModRevision + 1, Type: registry.InstanceChanged, Instance: id, App: "demo",
		State: registry.InstanceFailed, Reason: "exit <code> 3"}, time.Now())

	for path, want := range map[string][]string{
		"/ui/": {`data-chart="app-demo"`, `<title id="app-demo-t">Running instances of demo</title>`,
			"now 0, lowest 0, highest 0 (2 samples)"}, // the sample and the value now
		"/ui/apps/demo": {`data-chart="app-demo"`, "<summary>Numbers</summary>"},
		"/ui/hosts/h1":  {`data-chart="load-h1"`, `data-chart="mem-h1"`, "Memory used on h1"},
		"/ui/instances/" + id: {`<table id="states">`, `data-transition="pending"`, `data-transition="failed"`,
			"exit &lt;code&gt; 3"},
	} {
		code, body := f.get(t, path)
		if code != 200 {
			t.Fatalf("GET %s: %d", path, code)
		}
		mustContain(t, body, want...)
	}
}
