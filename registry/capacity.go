package registry

import (
	"context"
	"errors"
	"fmt"
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
}

// NewFleet computes the fleet from the live hosts and the instances. It is
// pure: the registry's reads are Hosts and Instances.
func NewFleet(hosts []Host, insts []Instance) Fleet {
	f := Fleet{Takes: map[string]int{}}
	used := map[string]int{}
	caps := map[string]int{}
	for _, h := range hosts {
		if h.Draining {
			continue
		}
		f.Hosts++
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
		if in.Host == "" || in.State == InstancePending {
			if in.counted() {
				f.Pending++
				f.Takes[in.App+"/"+in.Rev+"/"+in.Proc]++
			}
			continue
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
