package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Record kinds of admission, as BadRecord.Kind names them.
const (
	KindConfig      = "config"
	KindScaleStatus = "scale-status"
)

// DefaultMaxScale is the most instances one process type of one revision
// may be scaled to when the fleet sets no other bound (config/max_scale).
const DefaultMaxScale = 10000

// ErrOverCapacity marks a scale the fleet cannot run (see Fleet); the
// registry API itself never refuses for capacity (it admits what fits and
// lets the rest wait), the CLI does unless forced.
var ErrOverCapacity = errors.New("registry: above the fleet's capacity")

func (r *Registry) configKey(name string) string { return r.prefix + "config/" + name }

func (r *Registry) statusDir() string { return r.prefix + "status/" }
func (r *Registry) statusKey(app, rev, proc string) string {
	return r.statusDir() + app + "/" + rev + "/" + proc
}

// MaxScale returns the fleet's bound on one scale: config/max_scale, or
// DefaultMaxScale when unset.
func (r *Registry) MaxScale(ctx context.Context) (int, error) {
	resp, err := r.cli.Get(ctx, r.configKey("max_scale"))
	if err != nil {
		return 0, errorf("registry: read max_scale: %w", err)
	}
	kv := first(resp.Kvs)
	if kv == nil {
		return DefaultMaxScale, nil
	}
	n, err := strconv.Atoi(string(kv.Value))
	if err == nil && n < 1 {
		err = fmt.Errorf("%d is below 1", n)
	}
	if err != nil {
		return 0, corrupt(KindConfig, kv.Key, err)
	}
	return n, nil
}

// SetMaxScale sets the fleet's bound on one scale (config/max_scale); 0
// removes it, so DefaultMaxScale applies.
func (r *Registry) SetMaxScale(ctx context.Context, n int) error {
	if n < 0 {
		return fmt.Errorf("%w: max_scale %d is negative", ErrInvalid, n)
	}
	var err error
	if n == 0 {
		_, err = r.cli.Delete(ctx, r.configKey("max_scale"))
	} else {
		_, err = r.cli.Put(ctx, r.configKey("max_scale"), strconv.Itoa(n))
	}
	if err != nil {
		return errorf("registry: set max_scale: %w", err)
	}
	return nil
}

// Fleet is what the live hosts can take, in instance slots: each host
// advertises its Capacity (see Host), and each instance on it that is not
// terminal takes one slot. It is a snapshot for decisions (the CLI's
// check, how many start tickets Scale writes); each agent enforces its own
// capacity when it claims, so a stale Fleet never overloads a host.
type Fleet struct {
	// Hosts counts the live hosts that take starts (not draining).
	Hosts int
	// Slots is the sum of their capacities; Used the slots their
	// instances take (an instance over a host's capacity, e.g. after the
	// capacity was lowered, counts up to the capacity only).
	Slots, Used int
	// Unlimited is set when one of them has no capacity bound: then
	// Slots and Used say nothing and Room is unbounded.
	Unlimited bool
	// Pending counts the instances waiting for a host (pending start
	// tickets): they will take free slots first.
	Pending int
	// Takes counts, per app/rev/proc ("app/rev/proc"), the slots its
	// instances use and its pending instances.
	Takes map[string]int

	// rooms is what each live host (not draining) has left after its
	// instances' reservations; pending holds, per app/rev/proc, the
	// reservations of its pending instances (see Fits).
	rooms   []hostRoom
	pending map[string][]*Limits
}

// hostRoom is what one host has left for more instances. A negative
// slots, mem or cpu bounds nothing (unlimited, or not known).
type hostRoom struct {
	slots    int
	mem      int64
	cpu      int
	memTotal int64
	cpuTotal int
	instMem  int64 // what an instance declaring no memory reserves there
}

// need is what an instance reserving l takes on host h.
func (h hostRoom) need(l *Limits) (mem int64, cpu int) {
	mem = h.instMem
	if l != nil {
		if l.MemoryBytes > 0 {
			mem = l.MemoryBytes
		}
		cpu = l.CPUMillis
	}
	return mem, cpu
}

// fit is how many instances reserving l fit on h by slots, memory and
// CPU apart (-1: unbounded).
func (h hostRoom) fit(l *Limits) (slots, mem, cpu int) {
	m, c := h.need(l)
	slots, mem, cpu = h.slots, -1, -1
	if slots >= 0 {
		slots = max(slots, 0)
	}
	if h.mem >= 0 && m > 0 {
		mem = int(max(h.mem, 0) / m)
	}
	if h.cpu >= 0 && c > 0 {
		cpu = max(h.cpu, 0) / c
	}
	return slots, mem, cpu
}

// take counts one instance reserving l on h.
func (h *hostRoom) take(l *Limits) {
	m, c := h.need(l)
	if h.slots >= 0 {
		h.slots--
	}
	if h.mem >= 0 {
		h.mem -= m
	}
	if h.cpu >= 0 {
		h.cpu -= c
	}
}

// minFit is the smallest of bounds, -1 (unbounded) counting as none.
func minFit(bounds ...int) int {
	n := -1
	for _, b := range bounds {
		if b >= 0 && (n < 0 || b < n) {
			n = b
		}
	}
	return n
}

// NewFleet computes the fleet from the live hosts and the instances. It is
// pure: the registry's reads are Hosts and Instances.
func NewFleet(hosts []Host, insts []Instance) Fleet {
	f := Fleet{Takes: map[string]int{}, pending: map[string][]*Limits{}}
	used := map[string]int{}
	caps := map[string]int{}
	room := map[string]int{} // host -> index in f.rooms
	for _, h := range hosts {
		if h.Draining {
			continue
		}
		f.Hosts++
		room[h.ID] = len(f.rooms)
		f.rooms = append(f.rooms, newHostRoom(h))
		if h.Capacity <= 0 {
			f.Unlimited = true
			continue
		}
		f.Slots += h.Capacity
		caps[h.ID] = h.Capacity
	}
	for _, in := range insts {
		if in.State.Terminal() {
			continue
		}
		key := in.App + "/" + in.Rev + "/" + in.Proc
		if in.Host == "" || in.State == InstancePending {
			if in.counted() {
				f.Pending++
				f.Takes[key]++
				f.pending[key] = append(f.pending[key], in.Reserve)
			}
			continue
		}
		if i, ok := room[in.Host]; ok {
			f.rooms[i].take(in.Reserve)
		}
		c, ok := caps[in.Host]
		if !ok || used[in.Host] >= c {
			continue
		}
		used[in.Host]++
		f.Used++
		f.Takes[in.App+"/"+in.Rev+"/"+in.Proc]++
	}
	return f
}

// Room is how many more instances the fleet can take now: free slots not
// spoken for by pending instances. -1 means unbounded. (Scale uses For,
// less what the scale itself counts.)
func (f Fleet) Room() int {
	if f.Unlimited {
		return -1
	}
	return max(0, f.Slots-f.Used-f.Pending)
}

// For is how many instances of app/rev/proc the fleet could run: the
// slots that other instances neither use nor wait for. -1 means
// unbounded.
func (f Fleet) For(app, rev, proc string) int {
	if f.Unlimited {
		return -1
	}
	return max(0, f.Slots-(f.Used+f.Pending-f.Takes[app+"/"+rev+"/"+proc]))
}

// Reason says why instances wait, e.g. "no host has capacity: 3 hosts,
// 2997/3000 slots used, 12 pending".
func (f Fleet) Reason() string {
	if f.Hosts == 0 {
		return "no host has capacity: no live host takes starts"
	}
	s := fmt.Sprintf("no host has capacity: %s, %d/%d slots used", plural(f.Hosts, "host"), f.Used, f.Slots)
	if f.Pending > 0 {
		s += fmt.Sprintf(", %d pending", f.Pending)
	}
	return s
}

func newHostRoom(h Host) hostRoom {
	r := hostRoom{slots: -1, mem: -1, cpu: -1}
	if h.Capacity > 0 {
		r.slots = h.Capacity
	}
	if res := h.Resources; res != nil {
		if res.MemoryBytes > 0 {
			r.mem, r.memTotal = res.MemoryBytes, res.MemoryBytes
		}
		if res.CPUMillis > 0 {
			r.cpu, r.cpuTotal = res.CPUMillis, res.CPUMillis
		}
		r.instMem = res.InstanceMemory
	}
	return r
}

// Fits is how many more instances of app/rev/proc, each reserving want
// (nil: the hosts' default), the live hosts can take by the memory and
// CPU they advertise (Host.Resources) and their free slots, and, when
// memory or CPU is what bounds that count below the free slots, why
// (e.g. "no host has memory: 2 hosts, 1536/2048 MiB reserved, the
// instance reserves 1024 MiB"; "" when slots bind or nothing does). -1
// means unbounded. have is how many instances of app/rev/proc are live
// or pending (the caller counts them, as Scale does from its snapshot,
// which may be newer than the fleet): those the fleet does not count on a
// host are pending. They and the other scales' pending instances are
// placed on the hosts first, largest first, each on the first host with
// room; one that fits nowhere takes nothing. Which host an instance lands
// on is the agents' choice, so this is an estimate that each agent's own
// admission makes safe.
func (f Fleet) Fits(app, rev, proc string, want *Limits, have int) (int, string) {
	if len(f.rooms) == 0 {
		return -1, ""
	}
	key := app + "/" + rev + "/" + proc
	own := max(0, have-(f.Takes[key]-len(f.pending[key])))
	rooms := slices.Clone(f.rooms)
	var queue []*Limits
	for k, ls := range f.pending {
		if k != key {
			queue = append(queue, ls...)
		}
	}
	for range own {
		queue = append(queue, want)
	}
	// Largest memory first (the default reservation counts as none).
	slices.SortStableFunc(queue, func(a, b *Limits) int { return cmp.Compare(memOf(b), memOf(a)) })
	for _, l := range queue {
		place(rooms, l)
	}
	// Each bound apart, summed over the hosts, unbounded counting as many.
	const many = 1 << 30
	bound := func(x int) int {
		if x < 0 {
			return many
		}
		return x
	}
	n, bySlots, byMem, byCPU := 0, 0, 0, 0
	for _, h := range rooms {
		slots, mem, cpu := h.fit(want)
		s, m, c := bound(slots), bound(mem), bound(cpu)
		k := min(s, m, c)
		if k == many {
			return -1, ""
		}
		n += k
		bySlots += s
		byMem += min(s, m)
		byCPU += min(s, c)
	}
	if n >= bySlots {
		return n, ""
	}
	// Name what binds: memory, CPU, or both (each binding other hosts).
	memBinds, cpuBinds := byMem < bySlots, byCPU < bySlots
	switch {
	case byMem == n && byCPU > n:
		cpuBinds = false
	case byCPU == n && byMem > n:
		memBinds = false
	}
	// The reason as it is once the n admitted are placed too.
	for range n {
		place(rooms, want)
	}
	return n, f.fitReason(rooms, want, memBinds, cpuBinds)
}

// place counts an instance reserving l on the first of rooms with room
// for it; one that fits nowhere takes nothing.
func place(rooms []hostRoom, l *Limits) {
	for i := range rooms {
		if minFit(rooms[i].fit(l)) != 0 {
			rooms[i].take(l)
			return
		}
	}
}

// fitReason says which of memory and CPU leaves no room for an instance
// reserving want on rooms (the hosts after placing the pending ones).
func (f Fleet) fitReason(rooms []hostRoom, want *Limits, mem, cpu bool) string {
	var memUsed, memTotal int64
	var cpuUsed, cpuTotal int
	for _, h := range rooms {
		if h.mem >= 0 {
			memUsed, memTotal = memUsed+h.memTotal-h.mem, memTotal+h.memTotal
		}
		if h.cpu >= 0 {
			cpuUsed, cpuTotal = cpuUsed+h.cpuTotal-h.cpu, cpuTotal+h.cpuTotal
		}
	}
	needMem := "the hosts' default"
	if m := memOf(want); m > 0 {
		needMem = mib(m)
	}
	var what, used, need []string
	if mem {
		what = append(what, "memory")
		used = append(used, fmt.Sprintf("%d/%d MiB", memUsed>>20, memTotal>>20))
		need = append(need, needMem)
	}
	if cpu {
		what = append(what, "cpu")
		used = append(used, fmt.Sprintf("%d/%dm", cpuUsed, cpuTotal))
		need = append(need, fmt.Sprintf("%dm", want.CPUMillis))
	}
	return fmt.Sprintf("no host has %s: %s, %s reserved, the instance reserves %s",
		strings.Join(what, " and "), plural(f.Hosts, "host"), strings.Join(used, " and "), strings.Join(need, " and "))
}

func memOf(l *Limits) int64 {
	if l == nil {
		return 0
	}
	return l.MemoryBytes
}

func mib(b int64) string { return fmt.Sprintf("%d MiB", b>>20) }

// addPending counts n more pending instances of app/rev/proc, each
// reserving l: start tickets just written.
func (f *Fleet) addPending(app, rev, proc string, l *Limits, n int) {
	key := app + "/" + rev + "/" + proc
	f.Pending += n
	f.Takes[key] += n
	if f.pending == nil {
		f.pending = map[string][]*Limits{}
	}
	for range n {
		f.pending[key] = append(f.pending[key], l)
	}
}

// reservation is what an instance of p reserves (its memory and CPU
// limits), nil when it declares neither: the host's default.
func (p ProcType) reservation() *Limits {
	if p.Limits.MemoryBytes <= 0 && p.Limits.CPUMillis <= 0 {
		return nil
	}
	return &Limits{MemoryBytes: max(p.Limits.MemoryBytes, 0), CPUMillis: max(p.Limits.CPUMillis, 0)}
}

// procReservation reads what an instance of app/rev/proc reserves now,
// with the compares that keep it so: a released revision's process type
// is its release's (the record never changes, compared anyway); a draft's
// is the app's, compared on its mod revision (absent when it does not
// exist). A record that does not decode reserves the default, as in Scale
// (the start's Launch read reports it).
func (r *Registry) procReservation(ctx context.Context, app, rev, proc string) (*Limits, []clientv3.Cmp, error) {
	resp, err := r.cli.Txn(ctx).Then(clientv3.OpGet(r.revKey(app, rev)), clientv3.OpGet(r.procKey(app, proc))).Commit()
	if err != nil {
		return nil, nil, fmt.Errorf("read process type %s/%s/%s: %w", app, rev, proc, err)
	}
	if kv := first(rangeKvs(resp, 0)); kv != nil {
		rv, err := decodeRevision(kv.Key, kv.Value, kv.ModRevision, app, rev)
		if err == nil && rv.Released() {
			p := rv.Release.Procs[proc] // absent: the default, and the start fails naming it
			return p.reservation(), []clientv3.Cmp{unchanged(r.revKey(app, rev), kv.ModRevision)}, nil
		}
	}
	kv := first(rangeKvs(resp, 1))
	if kv == nil {
		return nil, []clientv3.Cmp{unchanged(r.procKey(app, proc), 0)}, nil
	}
	cmps := []clientv3.Cmp{unchanged(r.procKey(app, proc), kv.ModRevision)}
	p, err := decodeProc(kv.Key, kv.Value, kv.ModRevision, app, proc)
	if err != nil {
		return nil, cmps, nil
	}
	return p.reservation(), cmps, nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// Fleet reads the live hosts and the instances and returns the fleet's
// capacity (see NewFleet).
func (r *Registry) Fleet(ctx context.Context) (Fleet, error) {
	hosts, err := r.Hosts(ctx)
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return Fleet{}, err
	}
	insts, err := r.Instances(ctx)
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return Fleet{}, err
	}
	return NewFleet(hosts, insts), nil
}

// ScaleStatus says why some of a scale's instances wait: the fleet had no
// room for them, so Scale wrote no start tickets for them yet. It is
// stored at status/<app>/<rev>/<proc>, written and deleted in the same
// transaction as the scale's tickets, and absent when nothing waits.
type ScaleStatus struct {
	App  string `json:"app"`
	Rev  string `json:"rev"`
	Proc string `json:"proc"`
	// Desired is the desired count; Admitted the instances counted (live
	// or with a start ticket); Waiting the rest.
	Desired  int       `json:"desired"`
	Admitted int       `json:"admitted"`
	Waiting  int       `json:"waiting"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
}

// String is e.g. "demo/v1/web: 3/100000 admitted, 99997 waiting: no host
// has capacity: 1 host, 3/3 slots used".
func (s ScaleStatus) String() string {
	return fmt.Sprintf("%s/%s/%s: %d/%d admitted, %d waiting: %s", s.App, s.Rev, s.Proc,
		s.Admitted, s.Desired, s.Waiting, s.Reason)
}

// same reports whether s and o say the same (Since aside).
func (s ScaleStatus) same(o ScaleStatus) bool {
	s.Since, o.Since = time.Time{}, time.Time{}
	return s == o
}

// ScaleStatuses lists the scales with instances waiting for capacity, of
// one app or of all when app is "". Records that do not decode are
// skipped and reported in an error wrapping ErrCorrupt.
func (r *Registry) ScaleStatuses(ctx context.Context, app string) ([]ScaleStatus, error) {
	dir := r.statusDir()
	if app != "" {
		if err := validName("app name", app); err != nil {
			return nil, err
		}
		dir += app + "/"
	}
	resp, err := r.cli.Get(ctx, dir, clientv3.WithPrefix())
	if err != nil {
		return nil, errorf("registry: list scale statuses: %w", err)
	}
	var out []ScaleStatus
	var errs []error
	for _, kv := range resp.Kvs {
		if strings.Count(strings.TrimPrefix(string(kv.Key), r.statusDir()), "/") != 2 {
			continue
		}
		var s ScaleStatus
		if err := decodeJSON(KindScaleStatus, kv.Key, kv.Value, &s); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, s)
	}
	return out, joinCorrupt(errs)
}
