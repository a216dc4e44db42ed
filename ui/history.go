package ui

import (
	"context"
	"errors"
	"maps"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/registry"
)

// ring is a fixed-size buffer that keeps the last n values pushed.
type ring[T any] struct {
	buf  []T
	next int
	full bool
}

func newRing[T any](n int) *ring[T] { return &ring[T]{buf: make([]T, max(n, 1))} }

func (r *ring[T]) push(v T) {
	r.buf[r.next] = v
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
}

// items returns a copy of the values, oldest first.
func (r *ring[T]) items() []T {
	if !r.full {
		return append([]T(nil), r.buf[:r.next]...)
	}
	out := make([]T, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...)
}

// Point is one sample of a series; V is NaN where the series had no value
// (a host that was not live then).
type Point struct {
	T time.Time
	V float64
}

// Transition is one state an instance entered, as the history saw it.
type Transition struct {
	State registry.InstanceState
	// At is when the instance entered State (the record's Since; the
	// time the event came if the record has none).
	At     time.Time
	Reason string
}

// HistoryConfig configures a History.
type HistoryConfig struct {
	// Registry is watched. Required.
	Registry *registry.Registry
	// Interval between two samples; default 10 s.
	Interval time.Duration
	// Samples kept per series; default 360 (an hour at 10 s).
	Samples int
	// Transitions kept per instance; default 32.
	Transitions int
	// Logger defaults to hclog.NewNullLogger().
	Logger hclog.Logger
}

// History is the bounded in-memory past the dashboard draws, kept by the
// serving agent: per app the running instances and per host the load and
// memory use, sampled every Interval for the last Samples samples; and per
// instance its last Transitions states. It is fed by one registry watch of
// events (instances) and one of hosts (their published load), after one
// list of the instances at start (and after a compaction); it never lists
// the registry on a timer. Its methods are safe for concurrent use.
type History struct {
	cfg HistoryConfig
	log hclog.Logger

	mu      sync.Mutex // guards the fields below
	started time.Time  // when Run listed the instances; zero before
	insts   map[string]instRec
	hosts   map[string]registry.HostLoad
	apps    map[string]*ring[Point] // running instances per app
	load    map[string]*ring[Point] // per host
	mem     map[string]*ring[Point] // per host
	trans   map[string]*ring[Transition]

	// applied, if set (tests), is called after each event Run applied.
	applied func(registry.Event)
	// listed, if set (tests), is called after each listing Run made.
	listed func()
}

// instRec is what the history keeps of an instance.
type instRec struct {
	app    string
	state  registry.InstanceState
	modRev int64
}

// NewHistory returns a History; Run feeds it.
func NewHistory(cfg HistoryConfig) *History {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Samples <= 0 {
		cfg.Samples = 360
	}
	if cfg.Transitions <= 0 {
		cfg.Transitions = 32
	}
	h := &History{cfg: cfg, log: cfg.Logger,
		insts: map[string]instRec{}, hosts: map[string]registry.HostLoad{},
		apps: map[string]*ring[Point]{}, load: map[string]*ring[Point]{}, mem: map[string]*ring[Point]{},
		trans: map[string]*ring[Transition]{}}
	if h.log == nil {
		h.log = hclog.NewNullLogger()
	}
	return h
}

// Window is the time the series cover (Interval × Samples).
func (h *History) Window() time.Duration { return h.cfg.Interval * time.Duration(h.cfg.Samples) }

// Since is when the history started watching (zero before).
func (h *History) Since() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.started
}

// Run feeds the history until ctx ends. Registry errors are retried.
func (h *History) Run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	hosts := h.cfg.Registry.WatchHosts(ctx)
	// The first set of hosts comes before the first sample, so that the
	// hosts' charts start with it.
	select {
	case hs, ok := <-hosts:
		if ok {
			h.setHosts(hs)
		}
	case <-ctx.Done():
	}
	wg.Go(func() {
		for hs := range hosts {
			h.setHosts(hs)
		}
	})
	tick := time.NewTicker(h.cfg.Interval)
	defer tick.Stop()
	for ctx.Err() == nil {
		if !h.follow(ctx, tick.C) {
			t := time.NewTimer(h.cfg.Interval)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// follow lists the instances, then applies the events from the list's
// revision on, sampling at every tick, until ctx ends or the watch lost
// events (compaction). It reports false after a failed read.
func (h *History) follow(ctx context.Context, tick <-chan time.Time) bool {
	reg := h.cfg.Registry
	cur, err := reg.CurrentRevision(ctx)
	if err != nil {
		h.log.Debug("history: registry revision", "error", err)
		return false
	}
	wctx, stop := context.WithCancel(ctx)
	evs := reg.WatchEvents(wctx, cur+1)
	defer func() {
		stop()
		for range evs { // the watch's goroutine closes it
		}
	}()
	insts, err := reg.Instances(ctx)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		h.log.Debug("history: list instances", "error", err)
		return false
	}
	h.list(insts)
	h.sample(time.Now())
	if h.listed != nil {
		h.listed()
	}
	for {
		select {
		case <-ctx.Done():
			return true
		case now := <-tick:
			h.sample(now)
		case ev, ok := <-evs:
			if !ok {
				return true
			}
			if errors.Is(ev.Err, registry.ErrCompacted) {
				return true // list again
			}
			h.apply(ev, time.Now())
			if h.applied != nil {
				h.applied(ev)
			}
		}
	}
}

// list replaces what the history knows of the instances with insts; the
// transitions of instances still there are kept.
func (h *History) list(insts []registry.Instance) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started.IsZero() {
		h.started = time.Now()
	}
	old := h.trans
	h.insts = map[string]instRec{}
	h.trans = map[string]*ring[Transition]{}
	for _, in := range insts {
		h.insts[in.ID] = instRec{app: in.App, state: in.State, modRev: in.ModRevision}
		if r := old[in.ID]; r != nil {
			h.trans[in.ID] = r
		}
		h.noteLocked(in.ID, in.State, in.Since, in.Reason, time.Now())
	}
}

// apply records one registry event (instance events; the rest is ignored).
// An event older than what the list read is skipped.
func (h *History) apply(ev registry.Event, now time.Time) {
	if ev.Err != nil || ev.Instance == "" || (ev.Type != registry.InstanceChanged && ev.Type != registry.InstanceDeleted) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	rec, known := h.insts[ev.Instance]
	if known && ev.Revision <= rec.modRev {
		return
	}
	if ev.Type == registry.InstanceDeleted {
		delete(h.insts, ev.Instance)
		delete(h.trans, ev.Instance)
		return
	}
	h.insts[ev.Instance] = instRec{app: ev.App, state: ev.State, modRev: ev.Revision}
	h.noteLocked(ev.Instance, ev.State, ev.Time, ev.Reason, now)
}

// noteLocked adds a transition to state unless it is the instance's last.
func (h *History) noteLocked(id string, state registry.InstanceState, since time.Time, reason string, now time.Time) {
	r := h.trans[id]
	if r == nil {
		r = newRing[Transition](h.cfg.Transitions)
		h.trans[id] = r
	}
	if last := r.items(); len(last) > 0 && last[len(last)-1].State == state {
		return
	}
	if since.IsZero() {
		since = now
	}
	r.push(Transition{State: state, At: since, Reason: reason})
}

func (h *History) setHosts(hs []registry.Host) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hosts = make(map[string]registry.HostLoad, len(hs))
	for _, hst := range hs {
		h.hosts[hst.ID] = hst.Load
	}
}

// sample adds one point to every series at now. A series with nothing
// in its whole window (an app without running instances, a host gone)
// is dropped, so the history stays bounded by what lives.
func (h *History) sample(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.push(h.apps, now, h.runningLocked(), true)
	load := make(map[string]float64, len(h.hosts))
	mem := make(map[string]float64, len(h.hosts))
	for id, l := range h.hosts {
		load[id], mem[id] = l.Load1, l.MemUsedPercent
	}
	h.push(h.load, now, load, false)
	h.push(h.mem, now, mem, false)
}

// push adds vals (by key) to the series at now; a series without a value
// gets a gap (or 0 when zeroMissing). Series empty over their window go.
func (h *History) push(series map[string]*ring[Point], now time.Time, vals map[string]float64, zeroMissing bool) {
	for k := range vals {
		if series[k] == nil {
			series[k] = newRing[Point](h.cfg.Samples)
		}
	}
	for k, r := range series {
		v, ok := vals[k]
		if !ok {
			v = math.NaN()
			if zeroMissing {
				v = 0
			}
		}
		r.push(Point{T: now, V: v})
		if !ok && empty(r.items()) {
			delete(series, k)
		}
	}
}

// empty reports whether no point has a value other than a gap or 0.
func empty(ps []Point) bool {
	for _, p := range ps {
		if !math.IsNaN(p.V) && p.V != 0 {
			return false
		}
	}
	return true
}

func seriesOf(series map[string]*ring[Point], k string) []Point {
	if r := series[k]; r != nil {
		return r.items()
	}
	return nil
}

// runningLocked counts the running instances per app (every app with an
// instance has an entry).
func (h *History) runningLocked() map[string]float64 {
	running := map[string]float64{}
	for _, r := range h.insts {
		if _, ok := running[r.app]; !ok {
			running[r.app] = 0
		}
		if r.state == registry.InstanceRunning {
			running[r.app]++
		}
	}
	return running
}

// Now returns what the history knows at this moment, between samples:
// the running instances per app and each live host's load. ok is false
// before Run listed the instances.
func (h *History) Now() (running map[string]float64, hosts map[string]registry.HostLoad, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.started.IsZero() {
		return nil, nil, false
	}
	return h.runningLocked(), maps.Clone(h.hosts), true
}

// AppRunning returns the app's running instance counts, oldest first.
func (h *History) AppRunning(app string) []Point {
	h.mu.Lock()
	defer h.mu.Unlock()
	return seriesOf(h.apps, app)
}

// Apps returns the apps that have a series, sorted.
func (h *History) Apps() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.apps))
	for k := range h.apps {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// HostLoad returns the host's load average (1 min) and memory use (in
// percent) samples, oldest first.
func (h *History) HostLoad(host string) (load, mem []Point) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return seriesOf(h.load, host), seriesOf(h.mem, host)
}

// Transitions returns the states the instance went through while the
// history watched, oldest first: the first is its state when the history
// started (or when it appeared), with the time its record gave.
func (h *History) Transitions(id string) []Transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.trans[id]; r != nil {
		return r.items()
	}
	return nil
}
