package fault

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/janitor"
	"github.com/visorhq/visor/internal/netnstest"
	"github.com/visorhq/visor/internal/testtime"
)

// namePrefix starts the name of every namespace the suite makes; the test
// process's pid follows ("vsrf<pid>-hub", "vsrf<pid>-h1"), so the leftovers
// of a run whose process is gone are known by name.
const namePrefix = "vsrf"

// hostNet is one agent host's network namespace.
type hostNet struct {
	ns   string     // namespace name
	veth string     // the hub's end of the host's veth pair (on the bridge)
	addr netip.Addr // the host's address (on eth0 inside ns)
}

// network is the suite's namespaces: a hub namespace holding the bridge
// and the etcd members' addresses, and one namespace per agent host joined
// to the bridge by a veth pair. Nothing of it is in the root namespace.
type network struct {
	tag   string // namePrefix + pid: every namespace's name starts with tag + "-"
	hub   string // hub namespace name
	hosts map[string]hostNet
	jan   *janitor.Janitor
}

// newNetwork removes the leftovers of dead runs, starts the run's janitor,
// then creates the hub namespace (bridge br0 with the etcd members'
// addresses .1, .2, .3) and one namespace per host (eth0 with .11, .12,
// ...), each joined to the bridge by a veth pair made inside the hub.
// Every command names its namespace (ip -n): none runs in the root
// namespace. The janitor is running before the first namespace exists, so
// a kill of the test at any later point leaves nothing behind.
func newNetwork(t testing.TB, hosts []string) *network {
	t.Helper()
	removeLeftovers(t)
	tag := namePrefix + strconv.Itoa(os.Getpid())
	jan, err := startJanitor(tag)
	if err != nil {
		t.Fatal(err)
	}
	n := &network{tag: tag, hub: tag + "-hub", hosts: map[string]hostNet{}, jan: jan}
	made := false
	defer func() {
		if !made { // a t.Fatal below: remove what was made so far
			n.teardown(t)
		}
	}()
	run := func(args ...string) {
		t.Helper()
		if _, err := netnstest.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := netnstest.NewBridgeNS(n.hub, n.memberAddr(1), n.memberAddr(2), n.memberAddr(3)); err != nil {
		t.Fatal(err)
	}
	for i, h := range hosts {
		hn := hostNet{ns: tag + "-" + h, veth: "v-" + h, addr: hostAddr(i)}
		n.hosts[h] = hn
		run("netns", "add", hn.ns)
		run("-n", hn.ns, "link", "set", "lo", "up")
		run("-n", n.hub, "link", "add", hn.veth, "type", "veth", "peer", "name", "eth0", "netns", hn.ns)
		run("-n", n.hub, "link", "set", hn.veth, "master", netnstest.Bridge)
		run("-n", n.hub, "link", "set", hn.veth, "up")
		run("-n", hn.ns, "addr", "add", hn.addr.String()+"/24", "dev", "eth0")
		run("-n", hn.ns, "link", "set", "eth0", "up")
	}
	made = true
	return n
}

// hostAddr is the address of the i-th (0-based) host.
func hostAddr(i int) netip.Addr { return netnstest.Addr(11 + i) }

// memberAddr returns the i-th (1-based) etcd member address on the bridge.
func (n *network) memberAddr(i int) netip.Addr { return netnstest.Addr(i) }

// namespaces returns the names of the run's namespaces, hub first.
func (n *network) namespaces() []string {
	names := []string{n.hub}
	for _, h := range n.hosts {
		names = append(names, h.ns)
	}
	sort.Strings(names[1:])
	return names
}

// partition cuts host off the bridge (its veth in the hub goes down) or
// heals it.
func (n *network) partition(host string, cut bool) error {
	state := "up"
	if cut {
		state = "down"
	}
	_, err := netnstest.IP("-n", n.hub, "link", "set", n.hosts[host].veth, state)
	return err
}

// dial connects to addr from inside the hub namespace. It is the etcd
// client's dialer: the test process itself stays in the root namespace;
// only its sockets are made in the hub (netnstest.Dial).
func (n *network) dial(ctx context.Context, addr string) (net.Conn, error) {
	return netnstest.Dial(ctx, n.hub, addr)
}

// teardown has the janitor kill every process in the run's namespaces and
// delete them, and waits (bounded) for it; if the janitor fails, the
// test process does the same itself.
func (n *network) teardown(t testing.TB) {
	t.Helper()
	if err := n.jan.Finish(testtime.Scaled(30 * time.Second)); err != nil {
		t.Errorf("janitor: %v; removing the namespaces from the test process", err)
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
		defer cancel()
		if err := removeRun(ctx, n.tag); err != nil {
			t.Error(err)
		}
	}
	if left := netnstest.Namespaces(n.tag + "-"); len(left) > 0 {
		t.Errorf("namespaces left after teardown: %v", left)
	}
}

// removeRun kills every process in the namespaces of run tag (agents,
// etcd members and the workloads the agents leave running) until none is
// left, then deletes the namespaces; the links inside them go with them
// (a veth pair dies with either end's namespace, the bridge with the hub).
func removeRun(ctx context.Context, tag string) error {
	if err := netnstest.RemoveNamespaces(ctx, netnstest.Namespaces(tag+"-")); err != nil {
		return fmt.Errorf("run %s: %w", tag, err)
	}
	return nil
}

// removeLeftovers removes what earlier runs whose test process is gone
// left behind: their namespaces (and the processes in them). Links named
// with the prefix in the root namespace are deleted too: older versions of
// the suite put their bridge and veths there.
func removeLeftovers(t testing.TB) {
	t.Helper()
	deadTag := func(name string) (string, bool) { return netnstest.DeadRun(namePrefix, name) }
	tags := netnstest.DeadRuns(namePrefix, netnstest.Dir)
	for tag := range tags {
		t.Logf("removing leftovers of run %s: namespaces %v", tag, netnstest.Namespaces(tag+"-"))
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
		err := removeRun(ctx, tag)
		cancel()
		if err != nil {
			t.Fatalf("leftovers of an earlier run: %v", err)
		}
	}
	if out, err := netnstest.IP("-o", "link", "show"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if _, ok := deadTag(name); ok {
				t.Logf("removing leftover root-namespace link %s of an older suite", name)
				_, _ = netnstest.IP("link", "del", name)
			}
		}
	}
}

// rootNetState is the root namespace's links, addresses and routes (IPv4
// and IPv6, every table), one sorted line each, without counters or
// timers, for comparing before and while the suite's network is up.
func rootNetState() (string, error) {
	var parts []string
	for _, args := range [][]string{
		{"-o", "link", "show"},
		{"-o", "addr", "show"},
		{"-4", "route", "show", "table", "all"},
		{"-6", "route", "show", "table", "all"},
	} {
		out, err := netnstest.IP(args...)
		if err != nil {
			return "", err
		}
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if l = normalizeNetLine(l); l != "" {
				lines = append(lines, l)
			}
		}
		sort.Strings(lines)
		parts = append(parts, "# ip "+strings.Join(args, " "), strings.Join(lines, "\n"))
	}
	return strings.Join(parts, "\n"), nil
}

// normalizeNetLine drops what changes on its own from an `ip -o` line: the
// address lifetimes that count down. Everything else, link state included,
// is compared.
func normalizeNetLine(l string) string {
	l = strings.TrimSpace(l)
	if i := strings.Index(l, "valid_lft"); i >= 0 {
		l = strings.TrimSpace(l[:i])
	}
	return l
}
