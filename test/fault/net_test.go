package fault

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/visorhq/visor/internal/proctest"
)

// namePrefix starts the name of every link and namespace the suite makes;
// the test process's pid follows, so leftovers of dead runs are known.
const namePrefix = "vsrf"

// candidateRanges are the documentation ranges the suite may use, in order
// of preference. 192.0.2.0/24 is never used: some machines route it.
var candidateRanges = []string{"203.0.113.0/24", "198.51.100.0/24"}

// hostNet is one agent host's network namespace.
type hostNet struct {
	ns   string     // namespace name
	veth string     // root-namespace end of the veth pair (on the bridge)
	addr netip.Addr // the host's address inside ns
}

// network is the suite's bridge and namespaces.
type network struct {
	t      testing.TB
	tag    string
	bridge string
	prefix netip.Prefix
	hosts  map[string]hostNet
}

// requireNetAdmin skips the test, with the reason, unless it runs as root
// with the ip command available.
func requireNetAdmin(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fault-injection suite needs root (network namespaces, bridges); skipped as non-root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("fault-injection suite needs the ip command (iproute2); not found in PATH")
	}
}

// ipCmd runs ip with args and returns its output.
func ipCmd(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// newNetwork creates the bridge (with the etcd members' addresses .1, .2,
// .3) and one namespace per host (addresses .11, .12, ...), connected by
// veth pairs. Teardown is registered before anything is created.
func newNetwork(t testing.TB, hosts []string) *network {
	t.Helper()
	removeLeftovers(t)
	pfx, err := freeRange()
	if err != nil {
		t.Fatal(err)
	}
	tag := namePrefix + strconv.Itoa(os.Getpid())
	n := &network{t: t, tag: tag, bridge: tag + "b", prefix: pfx, hosts: map[string]hostNet{}}
	t.Cleanup(n.teardown)
	base := pfx.Addr().As4()
	at := func(last byte) netip.Addr { b := base; b[3] = last; return netip.AddrFrom4(b) }
	run := func(args ...string) {
		t.Helper()
		if _, err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	run("link", "add", n.bridge, "type", "bridge")
	for i := 1; i <= 3; i++ {
		run("addr", "add", at(byte(i)).String()+"/24", "dev", n.bridge)
	}
	run("link", "set", n.bridge, "up")
	for i, h := range hosts {
		hn := hostNet{
			ns:   fmt.Sprintf("%s-%s", tag, h),
			veth: fmt.Sprintf("%sh%d", tag, i),
			addr: at(byte(11 + i)),
		}
		peer := fmt.Sprintf("%sp%d", tag, i)
		n.hosts[h] = hn
		run("netns", "add", hn.ns)
		run("link", "add", hn.veth, "type", "veth", "peer", "name", peer)
		run("link", "set", peer, "netns", hn.ns)
		run("link", "set", hn.veth, "master", n.bridge)
		run("link", "set", hn.veth, "up")
		run("-n", hn.ns, "link", "set", "lo", "up")
		run("-n", hn.ns, "link", "set", peer, "name", "eth0")
		run("-n", hn.ns, "addr", "add", hn.addr.String()+"/24", "dev", "eth0")
		run("-n", hn.ns, "link", "set", "eth0", "up")
	}
	return n
}

// addr returns the i-th (1-based) etcd member address on the bridge.
func (n *network) memberAddr(i int) netip.Addr {
	b := n.prefix.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

// partition cuts host off the bridge (its veth goes down) or heals it.
func (n *network) partition(host string, cut bool) error {
	state := "up"
	if cut {
		state = "down"
	}
	_, err := ipCmd("link", "set", n.hosts[host].veth, state)
	return err
}

// teardown removes the namespaces, veths and bridge (errors are ignored:
// some may never have been made).
func (n *network) teardown() {
	for _, h := range n.hosts {
		_, _ = ipCmd("link", "del", h.veth)
		_, _ = ipCmd("netns", "del", h.ns)
	}
	_, _ = ipCmd("link", "del", n.bridge)
}

// freeRange returns the first candidate range that no interface has an
// address in and no route (other than a default route) overlaps.
func freeRange() (netip.Prefix, error) {
	addrs, err := ipCmd("-o", "-4", "addr", "show")
	if err != nil {
		return netip.Prefix{}, err
	}
	routes, err := ipCmd("-4", "route", "show", "table", "all")
	if err != nil {
		return netip.Prefix{}, err
	}
	var used []netip.Prefix
	for _, line := range strings.Split(addrs, "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" {
				if p, err := netip.ParsePrefix(f[i+1]); err == nil {
					used = append(used, netip.PrefixFrom(p.Addr(), 32))
				}
			}
		}
	}
	for _, line := range strings.Split(routes, "\n") {
		if p, ok := routeDst(line); ok {
			used = append(used, p)
		}
	}
	for _, c := range candidateRanges {
		cand := netip.MustParsePrefix(c)
		free := true
		for _, u := range used {
			if u.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("fault: no free documentation range: %v are all assigned or routed here", candidateRanges)
}

// routeDst parses the destination of one `ip route show` line; default
// routes and unparsable lines report false.
func routeDst(line string) (netip.Prefix, bool) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return netip.Prefix{}, false
	}
	switch f[0] {
	case "unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "nat", "anycast":
		if len(f) < 2 {
			return netip.Prefix{}, false
		}
		f = f[1:]
	}
	if f[0] == "default" || f[0] == "0.0.0.0/0" {
		return netip.Prefix{}, false
	}
	if p, err := netip.ParsePrefix(f[0]); err == nil {
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(f[0]); err == nil {
		return netip.PrefixFrom(a, 32), true
	}
	return netip.Prefix{}, false
}

// removeLeftovers deletes links and namespaces of earlier runs whose test
// process is gone, and kills the processes those runs started.
func removeLeftovers(t testing.TB) {
	t.Helper()
	dead := func(name string) bool {
		rest, ok := strings.CutPrefix(name, namePrefix)
		if !ok {
			return false
		}
		end := 0
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		pid, err := strconv.Atoi(rest[:end])
		return err == nil && !proctest.Alive(pid)
	}
	for _, pid := range ownedProcesses(func(owner int) bool { return !proctest.Alive(owner) }) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if out, err := ipCmd("netns", "list"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && dead(f[0]) {
				t.Logf("removing leftover namespace %s", f[0])
				_, _ = ipCmd("netns", "del", f[0])
			}
		}
	}
	if out, err := ipCmd("-o", "link", "show"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if dead(name) {
				t.Logf("removing leftover link %s", name)
				_, _ = ipCmd("link", "del", name)
			}
		}
	}
}

// ownedProcesses returns the pids of live processes whose environment
// carries ownerEnv=<owner> with match(owner) true.
func ownedProcesses(match func(owner int) bool) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	key := []byte(ownerEnv + "=")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, key); ok {
				if owner, err := strconv.Atoi(string(v)); err == nil && match(owner) && proctest.Alive(pid) {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids
}
