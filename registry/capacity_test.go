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

// TestFleetFits: memory and CPU bound the instances a fleet can take below
// its free slots, and say so (as it is once those are admitted); pending
// instances (other scales' and this one's) are placed first; hosts that do
// not advertise resources bound nothing.
func TestFleetFits(t *testing.T) {
	const gib = 1 << 30
	res := func(mem int64, cpu int, instMem int64) *HostResources {
		return &HostResources{MemoryBytes: mem, CPUMillis: cpu, InstanceMemory: instMem}
	}
	on := func(id, host, proc string, l *Limits) Instance {
		st := InstanceRunning
		if host == "" {
			st = InstancePending
		}
		return Instance{ID: id, App: "a", Rev: "v1", Proc: proc, Host: host, State: st, Ticket: "t" + id, Reserve: l}
	}
	half := &Limits{MemoryBytes: gib / 2}
	cases := []struct {
		name   string
		hosts  []Host
		insts  []Instance
		want   *Limits
		have   int
		n      int
		reason string
	}{
		{
			name:  "memory binds below the free slots",
			hosts: []Host{{ID: "h1", Capacity: 10, Resources: res(2*gib, 2000, 0)}},
			insts: []Instance{on("1", "h1", "worker", half)},
			want:  half, n: 3,
			reason: "no host has memory: 1 host, 2048/2048 MiB reserved, the instance reserves 512 MiB",
		},
		{
			name:  "slots bind: no reason",
			hosts: []Host{{ID: "h1", Capacity: 2, Resources: res(8*gib, 8000, 0)}},
			want:  half, n: 2,
		},
		{
			name:  "cpu binds, summed over hosts",
			hosts: []Host{{ID: "h1", Capacity: 10, Resources: res(8*gib, 2000, 0)}, {ID: "h2", Capacity: 10, Resources: res(8*gib, 1000, 0)}},
			insts: []Instance{on("1", "h1", "web", &Limits{CPUMillis: 1500})},
			want:  &Limits{CPUMillis: 500}, n: 3,
			reason: "no host has cpu: 2 hosts, 3000/3000m reserved, the instance reserves 500m",
		},
		{
			name:  "undeclared instances reserve the host's default",
			hosts: []Host{{ID: "h1", Capacity: 100, Resources: res(gib, 0, 256<<20)}},
			insts: []Instance{on("1", "h1", "web", nil), on("2", "h1", "web", nil)},
			want:  nil, n: 2,
			reason: "no host has memory: 1 host, 1024/1024 MiB reserved, the instance reserves the hosts' default",
		},
		{
			name:  "other scales' pending instances are placed first",
			hosts: []Host{{ID: "h1", Capacity: 10, Resources: res(2*gib, 0, 0)}},
			insts: []Instance{on("1", "", "web", &Limits{MemoryBytes: gib})},
			want:  half, n: 2,
			reason: "no host has memory: 1 host, 2048/2048 MiB reserved, the instance reserves 512 MiB",
		},
		{
			name:  "this scale's own pending ones come from the caller's count",
			hosts: []Host{{ID: "h1", Capacity: 10, Resources: res(2*gib, 0, 0)}},
			insts: []Instance{on("1", "", "worker", half)},
			want:  half, have: 3, n: 1,
			reason: "no host has memory: 1 host, 2048/2048 MiB reserved, the instance reserves 512 MiB",
		},
		{
			name:  "a pending instance too large for every host takes nothing",
			hosts: []Host{{ID: "h1", Capacity: 10, Resources: res(gib, 0, 0)}},
			insts: []Instance{on("1", "", "web", &Limits{MemoryBytes: 4 * gib})},
			want:  half, n: 2,
			reason: "no host has memory: 1 host, 1024/1024 MiB reserved, the instance reserves 512 MiB",
		},
		{
			name:  "hosts without resources bound nothing",
			hosts: []Host{{ID: "h1"}, {ID: "h2", Capacity: 3}},
			want:  half, n: -1,
		},
		{
			name:  "an unlimited host bound by memory",
			hosts: []Host{{ID: "h1", Resources: res(gib, 0, 0)}},
			want:  half, n: 2,
			reason: "no host has memory: 1 host, 1024/1024 MiB reserved, the instance reserves 512 MiB",
		},
		{
			name:  "draining hosts give nothing",
			hosts: []Host{{ID: "h1", Capacity: 10, Resources: res(8*gib, 0, 0), Draining: true}, {ID: "h2", Capacity: 10, Resources: res(gib, 0, 0)}},
			want:  half, n: 2,
			reason: "no host has memory: 1 host, 1024/1024 MiB reserved, the instance reserves 512 MiB",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := NewFleet(c.hosts, c.insts)
			n, why := f.Fits("a", "v1", "worker", c.want, c.have)
			if n != c.n || why != c.reason {
				t.Errorf("Fits = %d, %q; want %d, %q", n, why, c.n, c.reason)
			}
		})
	}
}

// TestScaleAdmissionByMemory: with free slots but not the memory (or CPU)
// the proc type reserves, Scale writes tickets only for what fits and
// records the rest as waiting with the reason, like the slot wait; a host
// with room lets the next Rescale admit more; a claim carries the
// reservation into the instance, so the fleet still counts it.
func TestScaleAdmissionByMemory(t *testing.T) {
	r, _, ctx := setupWeb(t)
	s := registerRes(t, r, "h1", 100, HostResources{MemoryBytes: 1 << 30, CPUMillis: 4000})
	if _, err := r.SetProcType(ctx, ProcType{App: "web", Name: "worker", Command: "sleep 1000",
		Limits: Limits{MemoryBytes: 384 << 20, CPUMillis: 250}}); err != nil {
		t.Fatal(err)
	}
	res, err := r.Scale(ctx, "web", "v1", "worker", 5)
	must(t, err)
	const reason = "no host has memory: 1 host, 768/1024 MiB reserved, the instance reserves 384 MiB"
	if len(res.Started) != 2 || res.Waiting != 3 || res.Reason != reason {
		t.Fatalf("scale 5 on 1 GiB: started %d, waiting %d, reason %q", len(res.Started), res.Waiting, res.Reason)
	}
	st, err := r.ScaleStatuses(ctx, "web")
	must(t, err)
	if len(st) != 1 || st[0].Admitted != 2 || st[0].Waiting != 3 || st[0].Reason != reason {
		t.Fatalf("statuses = %+v", st)
	}
	tk, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	in, err := s.Claim(ctx, tk)
	must(t, err)
	if in.Reserve == nil || in.Reserve.MemoryBytes != 384<<20 {
		t.Fatalf("claimed instance reserve = %+v, want the ticket's", in.Reserve)
	}
	stored, err := r.Instance(ctx, in.ID)
	must(t, err)
	if stored.Reserve == nil || stored.Reserve.MemoryBytes != 384<<20 {
		t.Fatalf("stored instance reserve = %+v", stored.Reserve)
	}
	// The claimed one still reserves its memory: nothing more fits.
	again, err := r.Rescale(ctx, "web", "v1", "worker")
	must(t, err)
	if len(again.Started) != 0 || again.Waiting != 3 || again.Reason != reason {
		t.Fatalf("rescale without room: %+v", again)
	}

	// A host with CPU for one more (and memory for more) admits one, and
	// the reason names what is short now.
	registerRes(t, r, "h2", 100, HostResources{MemoryBytes: 4 << 30, CPUMillis: 250})
	more, err := r.Rescale(ctx, "web", "v1", "worker")
	must(t, err)
	if len(more.Started) != 1 || more.Waiting != 2 || !strings.HasPrefix(more.Reason, "no host has ") {
		t.Fatalf("rescale with a second host: started %d, waiting %d, reason %q", len(more.Started), more.Waiting, more.Reason)
	}
}

// TestReplaceInstanceReserves: a drain's replacement reserves what its
// process type declares, like a start ticket written by Scale.
func TestReplaceInstanceReserves(t *testing.T) {
	r, _, ctx := setupWeb(t)
	s := register(t, r, "h1")
	lim := Limits{MemoryBytes: 300 << 20, CPUMillis: 700}
	if _, err := r.SetProcType(ctx, ProcType{App: "web", Name: "worker", Command: "sleep 1000", Limits: lim}); err != nil {
		t.Fatal(err)
	}
	res, err := r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	tk, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	old, err := s.Claim(ctx, tk)
	must(t, err)
	rep, err := r.ReplaceInstance(ctx, old.ID)
	must(t, err)
	if rep.Reserve == nil || *rep.Reserve != (Limits{MemoryBytes: lim.MemoryBytes, CPUMillis: lim.CPUMillis}) {
		t.Fatalf("replacement ticket reserves %+v, want the proc type's %+v", rep.Reserve, lim)
	}
	nu, err := r.Instance(ctx, rep.Instance)
	must(t, err)
	if nu.Reserve == nil || nu.Reserve.MemoryBytes != lim.MemoryBytes {
		t.Fatalf("replacement instance reserves %+v", nu.Reserve)
	}
}

func registerRes(t *testing.T, r *Registry, id string, capacity int, res HostResources) *HostSession {
	t.Helper()
	s, err := r.RegisterHost(testCtx(t), Host{ID: id, Capacity: capacity, Resources: &res}, 10*time.Second)
	must(t, err)
	t.Cleanup(func() { s.Close(testCtx(t)) })
	return s
}
