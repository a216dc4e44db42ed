package registry

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNewFleet(t *testing.T) {
	live := func(id, host, proc string, st InstanceState) Instance {
		return Instance{ID: id, App: "a", Rev: "v1", Proc: proc, Host: host, State: st, Ticket: "t" + id}
	}
	cases := []struct {
		name       string
		hosts      []Host
		insts      []Instance
		room, forW int
		reason     string
	}{
		{
			name:   "no hosts",
			room:   0,
			forW:   0,
			reason: "no host has capacity: no live host takes starts",
		},
		{
			name:  "free slots",
			hosts: []Host{{ID: "h1", Capacity: 3}, {ID: "h2", Capacity: 2}},
			insts: []Instance{live("1", "h1", "web", InstanceRunning), live("2", "h2", "worker", InstanceStarting)},
			room:  3, forW: 4,
			reason: "no host has capacity: 2 hosts, 2/5 slots used",
		},
		{
			name:  "full, with pending and terminal instances",
			hosts: []Host{{ID: "h1", Capacity: 2}},
			insts: []Instance{
				live("1", "h1", "web", InstanceRunning), live("2", "h1", "web", InstanceBackoff),
				live("3", "", "web", InstancePending), live("4", "h1", "web", InstanceExited),
			},
			room: 0, forW: 2,
			reason: "no host has capacity: 1 host, 2/2 slots used, 1 pending",
		},
		{
			name:  "pending take the free slots first",
			hosts: []Host{{ID: "h1", Capacity: 5}},
			insts: []Instance{live("1", "", "web", InstancePending), live("2", "", "web", InstancePending)},
			room:  3, forW: 5,
			reason: "no host has capacity: 1 host, 0/5 slots used, 2 pending",
		},
		{
			name:  "a host over its capacity counts only its capacity",
			hosts: []Host{{ID: "h1", Capacity: 1}, {ID: "h2", Capacity: 2}},
			insts: []Instance{live("1", "h1", "web", InstanceRunning), live("2", "h1", "web", InstanceRunning)},
			room:  2, forW: 3,
			reason: "no host has capacity: 2 hosts, 1/3 slots used",
		},
		{
			name:  "draining hosts and gone hosts take nothing",
			hosts: []Host{{ID: "h1", Capacity: 4, Draining: true}, {ID: "h2", Capacity: 1}},
			insts: []Instance{live("1", "h1", "web", InstanceRunning), live("2", "gone", "web", InstanceRunning)},
			room:  1, forW: 1,
			reason: "no host has capacity: 1 host, 0/1 slots used",
		},
		{
			name:  "an unlimited host",
			hosts: []Host{{ID: "h1", Capacity: 4}, {ID: "h2"}},
			room:  -1, forW: -1,
			reason: "no host has capacity: 2 hosts, 0/4 slots used",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := NewFleet(c.hosts, c.insts)
			if got := f.Room(); got != c.room {
				t.Errorf("Room() = %d, want %d (%+v)", got, c.room, f)
			}
			if got := f.For("a", "v1", "web"); got != c.forW {
				t.Errorf("For(web) = %d, want %d (%+v)", got, c.forW, f)
			}
			if got := f.Reason(); got != c.reason {
				t.Errorf("Reason() = %q, want %q", got, c.reason)
			}
		})
	}
}

// TestScaleAdmission scales past a host's capacity: Scale writes start
// tickets only for the free slots and records what waits, with the
// reason, in the same transaction; more slots let the next Rescale admit
// more; scaling back clears the status.
func TestScaleAdmission(t *testing.T) {
	r, _, ctx := setupWeb(t)
	s := registerCap(t, r, "h1", 10)
	if _, err := r.SetProcType(ctx, ProcType{App: "web", Name: "worker", Command: "sleep 1000",
		Limits: Limits{MemoryBytes: 64 << 20, CPUMillis: 250}}); err != nil {
		t.Fatal(err)
	}
	res, err := r.Scale(ctx, "web", "v1", "worker", 25)
	must(t, err)
	if len(res.Started) != 10 || res.Waiting != 15 || !strings.Contains(res.Reason, "1 host, 0/10 slots used, 10 pending") {
		t.Fatalf("scale 25 on 10 slots: started %d, waiting %d, reason %q", len(res.Started), res.Waiting, res.Reason)
	}
	st, err := r.ScaleStatuses(ctx, "web")
	must(t, err)
	if len(st) != 1 || st[0].Desired != 25 || st[0].Admitted != 10 || st[0].Waiting != 15 || st[0].Reason != res.Reason {
		t.Fatalf("statuses = %+v", st)
	}
	if got := st[0].String(); !strings.Contains(got, "web/v1/worker: 10/25 admitted, 15 waiting: no host has capacity") {
		t.Errorf("status string %q", got)
	}
	tk, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	if tk.Reserve == nil || tk.Reserve.MemoryBytes != 64<<20 || tk.Reserve.CPUMillis != 250 {
		t.Errorf("ticket reserve = %+v, want the proc type's limits", tk.Reserve)
	}

	// Nothing changed: a rescale writes nothing.
	again, err := r.Rescale(ctx, "web", "v1", "worker")
	must(t, err)
	if len(again.Started) != 0 || again.Waiting != 15 {
		t.Fatalf("rescale without room: %+v", again)
	}

	// A second host brings 10 more slots.
	registerCap(t, r, "h2", 10)
	f, err := r.Fleet(ctx)
	must(t, err)
	if f.Room() != 10 {
		t.Fatalf("room with a second host = %d (%+v)", f.Room(), f)
	}
	more, err := r.RescaleIn(ctx, "web", "v1", "worker", &f)
	must(t, err)
	if len(more.Started) != 10 || more.Waiting != 5 || f.Pending != 20 {
		t.Fatalf("rescale with room: started %d, waiting %d, fleet pending %d", len(more.Started), more.Waiting, f.Pending)
	}
	// A claim moves a slot from pending to used: no more room.
	if _, err := s.Claim(ctx, tk); err != nil {
		t.Fatal(err)
	}
	if f, err := r.Fleet(ctx); err != nil || f.Room() != 0 || f.Used != 1 || f.Pending != 19 {
		t.Fatalf("fleet after a claim = %+v, %v", f, err)
	}

	// Scaling to what runs clears the status.
	_, err = r.Scale(ctx, "web", "v1", "worker", 3)
	must(t, err)
	st, err = r.ScaleStatuses(ctx, "")
	must(t, err)
	if len(st) != 0 {
		t.Fatalf("statuses after scale down = %+v", st)
	}
}

func registerCap(t *testing.T, r *Registry, id string, capacity int) *HostSession {
	t.Helper()
	s, err := r.RegisterHost(testCtx(t), Host{ID: id, Capacity: capacity}, 10*time.Second)
	must(t, err)
	t.Cleanup(func() { s.Close(testCtx(t)) })
	return s
}

func TestMaxScale(t *testing.T) {
	r, _, ctx := setupWeb(t)
	n, err := r.MaxScale(ctx)
	must(t, err)
	if n != DefaultMaxScale {
		t.Fatalf("default max scale = %d", n)
	}
	_, err = r.Scale(ctx, "web", "v1", "worker", DefaultMaxScale+1)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "above the fleet's limit of 10000") {
		t.Fatalf("scale above the default limit: %v", err)
	}
	must(t, r.SetMaxScale(ctx, 5))
	_, err = r.Scale(ctx, "web", "v1", "worker", 6)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "limit of 5 ") {
		t.Fatalf("scale above a limit of 5: %v", err)
	}
	if _, err := r.Scale(ctx, "web", "v1", "worker", 5); err != nil {
		t.Fatalf("scale at the limit: %v", err)
	}
	if err := r.SetMaxScale(ctx, -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative max scale: %v", err)
	}
	must(t, r.SetMaxScale(ctx, 0))
	if n, _ := r.MaxScale(ctx); n != DefaultMaxScale {
		t.Fatalf("max scale after reset = %d", n)
	}
}

// TestRescaleStaleFleet: a fleet read before a Scale (as the reconciler's,
// once per pass) does not admit the scale's instances a second time: its
// own instances are counted from the scale's snapshot.
func TestRescaleStaleFleet(t *testing.T) {
	r, _, ctx := setupWeb(t)
	registerCap(t, r, "h1", 2)
	stale, err := r.Fleet(ctx)
	must(t, err)
	res, err := r.Scale(ctx, "web", "v1", "worker", 5)
	must(t, err)
	if len(res.Started) != 2 || res.Waiting != 3 {
		t.Fatalf("scale 5 on 2 slots: %d started, %d waiting", len(res.Started), res.Waiting)
	}
	again, err := r.RescaleIn(ctx, "web", "v1", "worker", &stale)
	must(t, err)
	if len(again.Started) != 0 || again.Waiting != 3 || again.Reason != "no host has capacity: 1 host, 0/2 slots used, 2 pending" {
		t.Fatalf("rescale on a stale fleet: %d started, %d waiting (%q)", len(again.Started), again.Waiting, again.Reason)
	}
}
