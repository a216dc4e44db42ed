package agent

import (
	"fmt"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// The plan tests start no etcd: planPass and memory.rescaled are pure.

var planNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var planCfg = reconcileConfig{interval: time.Minute, lostGrace: 30 * time.Second}

// in returns an instance of app/rev/proc n on host in state st, with an id
// as the registry makes them (<app>-<proc>-...).
func in(app, rev, proc string, n int, host string, st registry.InstanceState) registry.Instance {
	return registry.Instance{ID: fmt.Sprintf("%s-%s-%04d", app, proc, n), App: app, Rev: rev, Proc: proc,
		Host: host, State: st, Since: planNow.Add(-time.Minute), ModRevision: int64(n + 1)}
}

func web(n int, host string, st registry.InstanceState) registry.Instance {
	return in("demo", "v1", "web", n, host, st)
}

func with(i registry.Instance, f func(*registry.Instance)) registry.Instance { f(&i); return i }

func scale(app, rev, proc string, n int) registry.ScaleEntry {
	return registry.ScaleEntry{App: app, Rev: rev, Proc: proc, Desired: n}
}

func hosts(ids ...string) []registry.Host {
	out := make([]registry.Host, 0, len(ids))
	for _, id := range ids {
		out = append(out, registry.Host{ID: id})
	}
	return out
}

// snap returns a snapshot at planNow with everything read and hosts a, b
// alive; f adjusts it.
func snap(f func(*snapshot)) snapshot {
	s := snapshot{now: planNow, hosts: hosts("a", "b"), scalesOK: true, statusesOK: true, ticketsOK: true}
	if f != nil {
		f(&s)
	}
	return s
}

// planned is a plan in words, for comparing.
type planned struct {
	gone    map[string]time.Time
	lost    []string // "host: id id (reason)"
	drain   []string // "op id", "stop id late"
	rescale []string // "app/rev/proc:+n"
	stable  []string
	stuck   []string
	gc      []string
	next    time.Duration
}

func describe(p plan) planned {
	out := planned{gone: p.hostGone, stable: p.stable, gc: p.gc, next: p.next}
	for _, l := range p.lost {
		var ids []string
		for _, in := range l.instances {
			ids = append(ids, in.ID)
		}
		out.lost = append(out.lost, fmt.Sprintf("%s: %s (%s)", l.host, strings.Join(ids, " "), l.reason))
	}
	for _, d := range p.drain {
		s := d.op.String() + " " + d.in.ID
		if d.late {
			s += " late"
		}
		out.drain = append(out.drain, s)
	}
	for _, r := range p.rescale {
		out.rescale = append(out.rescale, fmt.Sprintf("%s:%+d", scaleKey(r.entry.App, r.entry.Rev, r.entry.Proc), r.drift))
	}
	for _, t := range p.stuck {
		out.stuck = append(out.stuck, t.ID)
	}
	return out
}

// want fills a planned with the defaults of a pass that changes nothing.
func want(f func(*planned)) planned {
	p := planned{gone: map[string]time.Time{}, next: planCfg.interval}
	if f != nil {
		f(&p)
	}
	return p
}

func TestPlan(t *testing.T) {
	const ago = -31 * time.Second // past the 30 s grace
	drainDeadline := func(d time.Duration) map[string]registry.Drain {
		dl := time.Time{}
		if d != 0 {
			dl = planNow.Add(d)
		}
		return map[string]registry.Drain{"a": {Host: "a", Since: planNow.Add(-time.Minute), Deadline: dl}}
	}
	cases := []struct {
		name string
		snap snapshot
		mem  func(*memory)
		want planned
	}{
		{"empty registry", snap(nil), nil, want(nil)},
		{"drift up", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 3)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning)}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v1/web:+2"} })},
		{"drift down", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning),
				web(2, "b", registry.InstanceStarting), web(3, "", registry.InstancePending)}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v1/web:-2"} })},
		{"exact: pending, claimed, starting, running and backoff all count", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 5)}
			s.instances = []registry.Instance{web(1, "", registry.InstancePending), web(2, "a", registry.InstanceClaimed),
				web(3, "a", registry.InstanceStarting), web(4, "b", registry.InstanceRunning), web(5, "b", registry.InstanceBackoff)}
		}), nil, want(nil)},
		{"exited, failed, lost and stopping instances do not count", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 4)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning), web(2, "a", registry.InstanceExited),
				web(3, "a", registry.InstanceFailed), web(4, "b", registry.InstanceLost), web(5, "b", registry.InstanceStopping)}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v1/web:+3"} })},
		{"stale records: stop ticket written, replaced, unknown state, foreign id", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 5)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning),
				with(web(2, "a", registry.InstanceRunning), func(i *registry.Instance) { i.StopTicket = "t-stop" }),
				with(web(3, "b", registry.InstanceRunning), func(i *registry.Instance) { i.ReplacedBy = "demo-web-0009" }),
				web(4, "b", registry.InstanceState("zombie")),
				with(web(5, "b", registry.InstanceRunning), func(i *registry.Instance) { i.ID = "other-web-0005" })}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v1/web:+4"} })},
		{"zero scale with nothing left", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 0)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceExited)}
		}), nil, want(nil)},
		{"zero scale stops what runs", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 0)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning), web(2, "", registry.InstancePending)}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v1/web:-2"} })},
		{"app deleted: its instances are nobody's scale", snap(func(s *snapshot) {
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning)}
		}), nil, want(nil)},
		{"several revisions and process types counted apart", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 2), scale("demo", "v2", "web", 3),
				scale("demo", "v1", "worker", 1), scale("shop", "v1", "web", 1)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning), web(2, "b", registry.InstanceRunning),
				in("demo", "v2", "web", 3, "a", registry.InstanceRunning),
				in("shop", "v1", "web", 4, "b", registry.InstanceRunning)}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v2/web:+2", "demo/v1/worker:+1"} })},
		{"host newly seen without a lease: the grace starts now", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{web(1, "c", registry.InstanceRunning)}
		}), nil, want(func(p *planned) {
			p.gone = map[string]time.Time{"c": planNow}
			p.next = planCfg.lostGrace + 50*time.Millisecond
		})},
		{"lost host within the grace keeps its instances", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{web(1, "c", registry.InstanceRunning)}
		}), func(m *memory) { m.hostGone["c"] = planNow.Add(-20 * time.Second) }, want(func(p *planned) {
			p.gone = map[string]time.Time{"c": planNow.Add(-20 * time.Second)}
			p.next = 10*time.Second + 50*time.Millisecond
		})},
		{"lost host past the grace: instances lost and replaced in the same pass", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 3)}
			s.instances = []registry.Instance{web(1, "c", registry.InstanceRunning), web(2, "c", registry.InstanceStopping),
				web(3, "c", registry.InstanceBackoff), web(4, "a", registry.InstanceRunning)}
		}), func(m *memory) { m.hostGone["c"] = planNow.Add(ago) }, want(func(p *planned) {
			p.gone = map[string]time.Time{"c": planNow.Add(ago)}
			p.lost = []string{"c: demo-web-0001 demo-web-0002 demo-web-0003 (host c gone for 31s)"}
			p.rescale = []string{"demo/v1/web:+2"}
		})},
		{"lost host: pending, claimed and terminal instances are not marked", snap(func(s *snapshot) {
			s.instances = []registry.Instance{web(1, "c", registry.InstanceClaimed), web(2, "c", registry.InstanceExited),
				web(3, "c", registry.InstanceFailed), web(4, "c", registry.InstancePending)}
		}), func(m *memory) { m.hostGone["c"] = planNow.Add(ago) }, want(func(p *planned) {
			p.gone = map[string]time.Time{"c": planNow.Add(ago)}
		})},
		{"two hosts lost, in host order", snap(func(s *snapshot) {
			s.hosts = hosts("a")
			s.instances = []registry.Instance{web(1, "d", registry.InstanceRunning), web(2, "c", registry.InstanceRunning)}
		}), func(m *memory) { m.hostGone["c"] = planNow.Add(ago); m.hostGone["d"] = planNow.Add(-time.Hour) }, want(func(p *planned) {
			p.gone = map[string]time.Time{"c": planNow.Add(ago), "d": planNow.Add(-time.Hour)}
			p.lost = []string{"c: demo-web-0002 (host c gone for 31s)", "d: demo-web-0001 (host d gone for 1h0m0s)"}
		})},
		{"host flapping: back before the grace, it is forgotten", snap(func(s *snapshot) {
			s.instances = []registry.Instance{web(1, "b", registry.InstanceRunning)}
		}), func(m *memory) {
			m.hostGone["b"] = planNow.Add(-time.Hour)
			m.hostGone["z"] = planNow.Add(-time.Second)
		},
			want(func(p *planned) { p.gone = map[string]time.Time{"z": planNow.Add(-time.Second)} })},
		{"host whose record does not decode is alive", snap(func(s *snapshot) {
			s.badHosts = []string{"c"}
			s.instances = []registry.Instance{web(1, "c", registry.InstanceRunning)}
		}), func(m *memory) { m.hostGone["c"] = planNow.Add(ago) }, want(nil)},
		{"drain: a live instance gets a replacement", snap(func(s *snapshot) {
			s.drains = drainDeadline(0)
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 2)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning), web(2, "b", registry.InstanceRunning),
				with(web(3, "a", registry.InstanceRunning), func(i *registry.Instance) { i.StopTicket = "t-stop" }),
				web(4, "a", registry.InstanceExited)}
		}), nil, want(func(p *planned) { p.drain = []string{"replace demo-web-0001"} })},
		{"drain: the replacement runs, the old one stops", snap(func(s *snapshot) {
			s.drains = drainDeadline(time.Hour)
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{
				with(web(1, "a", registry.InstanceRunning), func(i *registry.Instance) { i.ReplacedBy = "demo-web-0002" }),
				web(2, "b", registry.InstanceRunning)}
		}), nil, want(func(p *planned) { p.drain = []string{"stop demo-web-0001"} })},
		{"drain: replacement still starting, deadline ahead", snap(func(s *snapshot) {
			s.drains = drainDeadline(10 * time.Second)
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{
				with(web(1, "a", registry.InstanceRunning), func(i *registry.Instance) { i.ReplacedBy = "demo-web-0002" }),
				web(2, "b", registry.InstanceStarting)}
		}), nil, want(func(p *planned) { p.next = 10*time.Second + 50*time.Millisecond })},
		{"drain: deadline passed before the replacement ran", snap(func(s *snapshot) {
			s.drains = drainDeadline(-time.Second)
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{
				with(web(1, "a", registry.InstanceRunning), func(i *registry.Instance) { i.ReplacedBy = "demo-web-0002" }),
				web(2, "b", registry.InstanceStarting)}
		}), nil, want(func(p *planned) { p.drain = []string{"stop demo-web-0001 late"} })},
		{"drain: failed or vanished replacements are given up, the old ones count again", snap(func(s *snapshot) {
			s.drains = drainDeadline(0)
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 3)}
			s.instances = []registry.Instance{
				with(web(1, "a", registry.InstanceRunning), func(i *registry.Instance) { i.ReplacedBy = "demo-web-0003" }),
				with(web(2, "a", registry.InstanceBackoff), func(i *registry.Instance) { i.ReplacedBy = "demo-web-0009" }),
				web(3, "b", registry.InstanceFailed)}
		}), nil, want(func(p *planned) {
			p.drain = []string{"cancel demo-web-0001", "cancel demo-web-0002"}
			p.rescale = []string{"demo/v1/web:+1"}
		})},
		{"failed starts: a repair backing off waits", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 2), scale("demo", "v1", "worker", 1)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceFailed)}
		}), func(m *memory) {
			m.fixes["demo/v1/web"] = fixState{next: planNow.Add(4 * time.Second), delay: 8 * time.Second, last: planNow.Add(-4 * time.Second)}
		}, want(func(p *planned) { p.rescale = []string{"demo/v1/worker:+1"}; p.next = 4 * time.Second })},
		{"failed starts: the backoff has run out", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceFailed)}
		}), func(m *memory) {
			m.fixes["demo/v1/web"] = fixState{next: planNow, delay: 8 * time.Second, last: planNow.Add(-8 * time.Second)}
		}, want(func(p *planned) { p.rescale = []string{"demo/v1/web:+1"} })},
		{"repairs stopped long enough: stable again", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1), scale("demo", "v1", "worker", 1)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning), in("demo", "v1", "worker", 2, "b", registry.InstanceRunning)}
		}), func(m *memory) {
			m.fixes["demo/v1/web"] = fixState{next: planNow.Add(-5 * time.Minute), delay: time.Second, last: planNow.Add(-6 * time.Minute)}
			m.fixes["demo/v1/worker"] = fixState{next: planNow.Add(-time.Minute), delay: time.Second, last: planNow.Add(-2 * time.Minute)}
		}, want(func(p *planned) { p.stable = []string{"demo/v1/web"} })},
		{"waiting for capacity, in place: re-applied to bring the status up to date", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning)}
		}), func(m *memory) { m.waiting["demo/v1/web"] = "no host has capacity" },
			want(func(p *planned) { p.rescale = []string{"demo/v1/web:+0"} })},
		{"stored status, in place: re-applied", snap(func(s *snapshot) {
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1), scale("demo", "v1", "worker", 0)}
			s.statuses = map[string]bool{"demo/v1/web": true}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning)}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v1/web:+0"} })},
		{"statuses unread: every scale is re-applied", snap(func(s *snapshot) {
			s.statusesOK = false
			s.scales = []registry.ScaleEntry{scale("demo", "v1", "web", 1), scale("demo", "v1", "worker", 0)}
			s.instances = []registry.Instance{web(1, "a", registry.InstanceRunning)}
		}), nil, want(func(p *planned) { p.rescale = []string{"demo/v1/web:+0", "demo/v1/worker:+0"} })},
		{"scales unread: lost hosts and drains only, and soon again", snap(func(s *snapshot) {
			s.scalesOK, s.scales = false, nil
			s.drains = drainDeadline(0)
			s.tickets = []registry.Ticket{{ID: "t1", FailedHosts: []string{"a", "b"}}}
			s.instances = []registry.Instance{web(1, "c", registry.InstanceRunning), web(2, "a", registry.InstanceRunning),
				with(web(3, "a", registry.InstanceExited), func(i *registry.Instance) { i.Since = planNow.Add(-2 * time.Hour) })}
		}), func(m *memory) { m.hostGone["c"] = planNow.Add(ago) }, want(func(p *planned) {
			p.gone = map[string]time.Time{"c": planNow.Add(ago)}
			p.lost = []string{"c: demo-web-0001 (host c gone for 31s)"}
			p.drain = []string{"replace demo-web-0002"}
			p.next = 2 * time.Second
		})},
		{"unplaceable tickets are reported once", snap(func(s *snapshot) {
			s.hosts = []registry.Host{{ID: "a"}, {ID: "b"}, {ID: "c", Draining: true}}
			s.tickets = []registry.Ticket{
				{ID: "t-all-failed", FailedHosts: []string{"a", "b"}},
				{ID: "t-reported", FailedHosts: []string{"a", "b"}},
				{ID: "t-held", FailedHosts: []string{"a", "b"}, Holder: "c"},
				{ID: "t-one-failed", FailedHosts: []string{"a"}},
				{ID: "t-never-failed"},
				{ID: "t-at-draining", Host: "c", FailedHosts: []string{"a"}}}
		}), func(m *memory) { m.stuck["t-reported"] = true },
			want(func(p *planned) { p.stuck = []string{"t-all-failed", "t-at-draining"} })},
		{"tickets unread: none reported", snap(func(s *snapshot) {
			s.ticketsOK = false
			s.tickets = []registry.Ticket{{ID: "t1", FailedHosts: []string{"a", "b"}}}
		}), nil, want(nil)},
		{"terminal instances older than an hour are collected", snap(func(s *snapshot) {
			old := func(i registry.Instance) registry.Instance {
				return with(i, func(i *registry.Instance) { i.Since = planNow.Add(-gcAge - time.Second) })
			}
			s.instances = []registry.Instance{old(web(1, "a", registry.InstanceExited)), old(web(2, "a", registry.InstanceFailed)),
				old(web(3, "", registry.InstanceLost)), old(web(4, "a", registry.InstanceRunning)), web(5, "a", registry.InstanceExited)}
		}), nil, want(func(p *planned) { p.gc = []string{"demo-web-0001", "demo-web-0002", "demo-web-0003"} })},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newMemory()
			if tc.mem != nil {
				tc.mem(&m)
			}
			before := copyMemory(m)
			got := describe(planPass(tc.snap, m, planCfg))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan\n got %+v\nwant %+v", got, tc.want)
			}
			if !reflect.DeepEqual(m, before) {
				t.Errorf("planPass changed its memory:\n got %+v\nwant %+v", m, before)
			}
		})
	}
}

func copyMemory(m memory) memory {
	return memory{hostGone: maps.Clone(m.hostGone), fixes: maps.Clone(m.fixes), stuck: maps.Clone(m.stuck),
		waiting: maps.Clone(m.waiting)}
}

// TestPlanRescaled drives what a re-applied scale's result does to the
// leader's memory: waiting for capacity, admitted, repairs and their
// backoff.
func TestPlanRescaled(t *testing.T) {
	const key = "demo/v1/web"
	repaired := registry.ScaleResult{Desired: 2, Started: []string{"t1"}}
	cases := []struct {
		name    string
		mem     func(*memory)
		res     registry.ScaleResult
		want    rescaleOutcome
		waiting map[string]string
		fixes   map[string]fixState
	}{
		{"in place, nothing remembered", nil, registry.ScaleResult{Desired: 2}, rescaleInPlace, map[string]string{}, map[string]fixState{}},
		{"first repair: a second before the next", nil, repaired, rescaleRepaired, map[string]string{},
			map[string]fixState{key: {next: planNow.Add(time.Second), delay: time.Second, last: planNow}}},
		{"repair soon after the last: backs off", func(m *memory) {
			m.fixes[key] = fixState{next: planNow.Add(-time.Second), delay: 2 * time.Second, last: planNow.Add(-3 * time.Second)}
		}, registry.ScaleResult{Desired: 1, Stopped: []string{"t2"}}, rescaleBacksOff, map[string]string{},
			map[string]fixState{key: {next: planNow.Add(4 * time.Second), delay: 4 * time.Second, last: planNow}}},
		{"backoff capped", func(m *memory) {
			m.fixes[key] = fixState{next: planNow, delay: maxFixBackoff, last: planNow.Add(-maxFixBackoff)}
		}, repaired, rescaleBacksOff, map[string]string{},
			map[string]fixState{key: {next: planNow.Add(maxFixBackoff), delay: maxFixBackoff, last: planNow}}},
		{"repair long after the last: same delay", func(m *memory) {
			m.fixes[key] = fixState{next: planNow.Add(-time.Minute), delay: 2 * time.Second, last: planNow.Add(-time.Minute)}
		}, registry.ScaleResult{Desired: 0, Cancelled: []string{"t3"}}, rescaleRepaired, map[string]string{},
			map[string]fixState{key: {next: planNow.Add(2 * time.Second), delay: 2 * time.Second, last: planNow}}},
		{"in place long after the last repair: stable again", func(m *memory) {
			m.fixes[key] = fixState{next: planNow.Add(-5 * time.Minute), delay: time.Second, last: planNow.Add(-6 * time.Minute)}
		}, registry.ScaleResult{Desired: 2}, rescaleInPlace, map[string]string{}, map[string]fixState{}},
		{"starts waiting for capacity: no backoff", nil,
			registry.ScaleResult{Desired: 9, Started: []string{"t1"}, Waiting: 8, Reason: "no room"}, rescaleWaits,
			map[string]string{key: "no room"}, map[string]fixState{}},
		{"still waiting for the same reason: nothing new", func(m *memory) { m.waiting[key] = "no room" },
			registry.ScaleResult{Desired: 9, Waiting: 8, Reason: "no room"}, rescaleInPlace,
			map[string]string{key: "no room"}, map[string]fixState{}},
		{"waiting for another reason", func(m *memory) { m.waiting[key] = "no room" },
			registry.ScaleResult{Desired: 9, Waiting: 8, Reason: "all hosts draining"}, rescaleWaits,
			map[string]string{key: "all hosts draining"}, map[string]fixState{}},
		{"every waiting instance admitted: no backoff for its tickets", func(m *memory) { m.waiting[key] = "no room" },
			registry.ScaleResult{Desired: 9, Started: []string{"t1", "t2"}}, rescaleAdmitted, map[string]string{}, map[string]fixState{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newMemory()
			if tc.mem != nil {
				tc.mem(&m)
			}
			if got := m.rescaled(key, tc.res, planNow); got != tc.want {
				t.Errorf("outcome %d, want %d", got, tc.want)
			}
			if !reflect.DeepEqual(m.waiting, tc.waiting) {
				t.Errorf("waiting %v, want %v", m.waiting, tc.waiting)
			}
			if !reflect.DeepEqual(m.fixes, tc.fixes) {
				t.Errorf("fixes %+v, want %+v", m.fixes, tc.fixes)
			}
		})
	}
}
