package test

import (
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/agent"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// overloadWatch follows the registry while a test overloads it: host keys
// that disappear, the live instances per host (from the typed event
// watch, so every state the registry went through is seen, not samples
// between polls), the most seen at once, and the start tickets created.
type overloadWatch struct {
	mu        sync.Mutex
	hostsGone []string
	state     map[string]registry.Instance // live instances by id
	maxOnHost map[string]int
	created   int
}

func (w *overloadWatch) snapshot() (gone []string, maxOn map[string]int, created int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	maxOn = map[string]int{}
	for h, n := range w.maxOnHost {
		maxOn[h] = n
	}
	return append([]string(nil), w.hostsGone...), maxOn, w.created
}

func (w *overloadWatch) event(ev registry.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch ev.Type {
	case registry.HostLeft:
		w.hostsGone = append(w.hostsGone, ev.Host)
	case registry.TicketCreated:
		w.created++
	case registry.InstanceDeleted:
		delete(w.state, ev.Instance)
	case registry.InstanceChanged:
		if ev.State.Terminal() || ev.State == registry.InstancePending || ev.Host == "" {
			delete(w.state, ev.Instance)
			return
		}
		w.state[ev.Instance] = registry.Instance{ID: ev.Instance, Host: ev.Host, State: ev.State}
		on := 0
		for _, in := range w.state {
			if in.Host == ev.Host {
				on++
			}
		}
		w.maxOnHost[ev.Host] = max(w.maxOnHost[ev.Host], on)
	}
}

// TestOverloadStaysWithinCapacity scales far past what two small agents
// can run (capacity 30 each), through the registry API as a script would
// (the CLI refuses it without --force): the hosts keep their leases
// throughout, no host ever holds more live instances than its capacity,
// the registry gets start tickets only for the free slots and the rest
// waits with the reason, and a scale to 0 through the CLI completes.
func TestOverloadStaysWithinCapacity(t *testing.T) {
	const capacity, hosts = 30, 2
	c := newCluster(t)
	c.app("load")
	cli := c.etcd.Client(t)
	start, err := cli.Get(c.ctx, c.prefix+"nothing")
	must(t, err)

	w := &overloadWatch{state: map[string]registry.Instance{}, maxOnHost: map[string]int{}}
	wctx, stopWatch := context.WithCancel(c.ctx)
	var watching sync.WaitGroup
	events := c.reg.WatchEvents(wctx, start.Header.Revision+1)
	watching.Go(func() {
		for ev := range events {
			if ev.Err == nil {
				w.event(ev)
			}
		}
	})
	t.Cleanup(func() { stopWatch(); watching.Wait() })

	// A slow start rate, so the burst is still being started while the
	// scale goes up again and comes down. The lease has the product's
	// default TTL (scaled), not the harness's shorter one: the claim below
	// is that an agent keeps the lease it would have in production. With
	// 5 s (keepalive every 1.7 s) the test flaked at load 25-50: the
	// embedded etcd lives in this race-built test process, and stalls of
	// 2-3.5 s, seen in both agents' keepalives at the same moments (so not
	// one agent starving itself), let a lease expire.
	for _, h := range []string{"load-a", "load-b"} {
		c.startAgent(h, "-capacity", "30", "-start-rate", "20", "-start-burst", "5",
			"-ttl", testtime.Scaled(agent.DefaultConfig().TTL).String())
	}
	proctest.WaitFor(t, 30*time.Second, "both hosts registered", func() bool {
		hs, err := c.reg.Hosts(c.ctx)
		return err == nil && len(hs) == hosts
	})

	// The CLI refuses, naming the capacity.
	out, err := exec.CommandContext(c.ctx, c.bin, "scale", "--endpoints", strings.Join(c.etcd.Endpoints(), ","),
		"--prefix", c.prefix, "load", "v1", "web=5000").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "above the fleet's capacity: 2 hosts, 60 slots, 0 taken by other instances: room for 60") {
		t.Fatalf("visor scale web=5000: %v: %s", err, out)
	}

	// Through the API: 10000 (the default bound) on 60 slots.
	res, err := c.reg.Scale(c.ctx, "load", "v1", "web", registry.DefaultMaxScale)
	must(t, err)
	if len(res.Started) != hosts*capacity || res.Waiting != registry.DefaultMaxScale-hosts*capacity {
		t.Fatalf("scale 10000 on 60 slots: %d tickets, %d waiting (%s)", len(res.Started), res.Waiting, res.Reason)
	}
	// Above the bound: refused, even through the API.
	if _, err := c.reg.Scale(c.ctx, "load", "v1", "web", registry.DefaultMaxScale+1); err == nil ||
		!strings.Contains(err.Error(), "above the fleet's limit of 10000") {
		t.Fatalf("scale above max_scale: %v", err)
	}

	got := c.waitSettled("load", hosts*capacity, 2*time.Minute)
	perHost := map[string]int{}
	for _, in := range got {
		perHost[in.Host]++
	}
	t.Logf("running per host: %v", perHost)

	// What waits says why, and nothing more was ticketed.
	proctest.WaitFor(t, 30*time.Second, "the waiting scale's reason with every slot used", func() bool {
		st, err := c.reg.ScaleStatuses(c.ctx, "load")
		return err == nil && len(st) == 1 && st[0].Waiting == registry.DefaultMaxScale-hosts*capacity &&
			strings.HasSuffix(st[0].Reason, "no host has capacity: 2 hosts, 60/60 slots used")
	})
	ts, err := c.reg.Tickets(c.ctx)
	must(t, err)
	if len(ts) != 0 {
		t.Errorf("%d tickets outstanding with every slot used, want 0 (the rest waits unticketed)", len(ts))
	}

	// Scale to 0 through the CLI; the control path completes under load.
	cmd := exec.CommandContext(c.ctx, c.bin, "scale", "--endpoints", strings.Join(c.etcd.Endpoints(), ","),
		"--prefix", c.prefix, "load", "v1", "web=0", "--wait", "--wait-timeout", testtime.Scaled(time.Minute).String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("visor scale web=0 --wait: %v\n%s", err, out)
	}
	c.waitSettled("load", 0, time.Minute)
	waitNoWorkloads(t, c, time.Minute)
	proctest.WaitFor(t, 30*time.Second, "the waiting status cleared", func() bool {
		st, err := c.reg.ScaleStatuses(c.ctx, "load")
		return err == nil && len(st) == 0
	})

	stopWatch()
	watching.Wait()
	gone, maxOn, created := w.snapshot()
	t.Logf("most live instances per host: %v; start and stop tickets created: %d", maxOn, created)
	if len(gone) != 0 {
		t.Errorf("host keys disappeared during the overload: %v", gone)
	}
	for h, n := range maxOn {
		if n > capacity {
			t.Errorf("host %s held %d live instances at once, capacity %d", h, n, capacity)
		}
	}
	// 60 starts, 60 stops; a few replacements at most (none expected).
	if created > 2*hosts*capacity+10 {
		t.Errorf("%d tickets created for 60 slots: tickets were written beyond the fleet's room", created)
	}
	// The host keys are still there at the end.
	resp, err := cli.Get(c.ctx, c.prefix+"hosts/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	must(t, err)
	n := 0
	for _, kv := range resp.Kvs {
		if !strings.Contains(strings.TrimPrefix(string(kv.Key), c.prefix+"hosts/"), "/") {
			n++
		}
	}
	if n != hosts {
		t.Errorf("%d host keys at the end, want %d", n, hosts)
	}
}
