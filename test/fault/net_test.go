package fault

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/visorhq/visor/internal/janitor"
	"github.com/visorhq/visor/internal/testtime"
)

// namePrefix starts the name of every namespace the suite makes; the test
// process's pid follows ("vsrf<pid>-hub", "vsrf<pid>-h1"), so the leftovers
// of a run whose process is gone are known by name.
const namePrefix = "vsrf"

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// testNet is the suite's only address range (RFC 5737 TEST-NET-2). It is
// used inside the suite's namespaces only, so it cannot clash with, or
// shadow, anything the machine itself reaches.
var testNet = netip.MustParsePrefix("198.51.100.0/24")

// hubBridge is the bridge in the hub namespace; every host's veth is on it.
const hubBridge = "br0"

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

// requireNetAdmin skips the test, with the reason, unless it runs as root
// with the ip command available.
func requireNetAdmin(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("fault-injection suite needs root (network namespaces, bridges); skipped as non-root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		// As root the suite must run (CI runs it on every submission): a
		// missing iproute2 is a broken machine, not a reason to skip.
		t.Fatal("fault-injection suite needs the ip command (iproute2: apt-get install iproute2); not found in PATH")
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
		if _, err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	run("netns", "add", n.hub)
	run("-n", n.hub, "link", "set", "lo", "up")
	run("-n", n.hub, "link", "add", hubBridge, "type", "bridge")
	for i := 1; i <= 3; i++ {
		run("-n", n.hub, "addr", "add", n.memberAddr(i).String()+"/24", "dev", hubBridge)
	}
	run("-n", n.hub, "link", "set", hubBridge, "up")
	for i, h := range hosts {
		hn := hostNet{ns: tag + "-" + h, veth: "v-" + h, addr: hostAddr(i)}
		n.hosts[h] = hn
		run("netns", "add", hn.ns)
		run("-n", hn.ns, "link", "set", "lo", "up")
		run("-n", n.hub, "link", "add", hn.veth, "type", "veth", "peer", "name", "eth0", "netns", hn.ns)
		run("-n", n.hub, "link", "set", hn.veth, "master", hubBridge)
		run("-n", n.hub, "link", "set", hn.veth, "up")
		run("-n", hn.ns, "addr", "add", hn.addr.String()+"/24", "dev", "eth0")
		run("-n", hn.ns, "link", "set", "eth0", "up")
	}
	made = true
	return n
}

// hostAddr is the address of the i-th (0-based) host.
func hostAddr(i int) netip.Addr {
	b := testNet.Addr().As4()
	b[3] = byte(11 + i)
	return netip.AddrFrom4(b)
}

// memberAddr returns the i-th (1-based) etcd member address on the bridge.
func (n *network) memberAddr(i int) netip.Addr {
	b := testNet.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

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
	_, err := ipCmd("-n", n.hub, "link", "set", n.hosts[host].veth, state)
	return err
}

// dial connects to addr from inside the hub namespace. It is the etcd
// client's dialer: the test process itself stays in the root namespace;
// only its sockets are made in the hub (a socket keeps the namespace it
// was created in). A goroutine locked to its OS thread enters the hub with
// setns, creates and connects the socket, and goes back to the thread's
// own namespace before unlocking. Should the way back fail, the goroutine
// ends still locked and the runtime ends that thread, so that no other
// goroutine ever runs in the hub. The thread is kept when it can be: a
// child's parent-death signal (Pdeathsig) fires when the thread that
// started it ends, and the agents and members were started from threads
// of this process. dial waits for the goroutine.
func (n *network) dial(ctx context.Context, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		c, restored, err := n.dialLocked(ctx, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// dialLocked does dial's work on a locked thread; restored reports whether
// the thread is back in its own namespace.
func (n *network) dialLocked(ctx context.Context, addr string) (c net.Conn, restored bool, err error) {
	own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, fmt.Errorf("open own namespace: %w", err)
	}
	defer unix.Close(own)
	hub, err := unix.Open(filepath.Join(netnsDir, n.hub), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, fmt.Errorf("open hub namespace: %w", err)
	}
	defer unix.Close(hub)
	if err := unix.Setns(hub, unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("enter hub namespace: %w", err)
	}
	var d net.Dialer
	c, err = d.DialContext(ctx, "tcp", addr)
	restored = unix.Setns(own, unix.CLONE_NEWNET) == nil
	return c, restored, err
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
	if left := runNamespaces(n.tag); len(left) > 0 {
		t.Errorf("namespaces left after teardown: %v", left)
	}
}

// runNamespaces lists the named namespaces whose name starts with tag-.
func runNamespaces(tag string) []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tag+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// nsInode returns the inode of a named network namespace (the number in
// /proc/<pid>/ns/net's "net:[N]").
func nsInode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// netnsOf returns the inode of pid's network namespace; false for a
// process that is gone or a zombie. It reads a symlink, never the
// process's memory, so it is quick even on a machine that is thrashing.
func netnsOf(pid int) (uint64, bool) {
	l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return 0, false
	}
	s, ok := strings.CutPrefix(l, "net:[")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	return ino, err == nil
}

// pidsIn returns the live processes whose network namespace is one of
// inodes (pid -> inode); it stops early, with what it has, when ctx ends.
func pidsIn(ctx context.Context, inodes map[uint64]bool) map[int]uint64 {
	out := map[int]uint64{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if ctx.Err() != nil {
			break
		}
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ino, ok := netnsOf(pid); ok && inodes[ino] {
			out[pid] = ino
		}
	}
	return out
}

// removeRun kills every process in the namespaces of run tag (agents,
// etcd members and the workloads the agents leave running) until none is
// left, then deletes the namespaces; the links inside them go with them
// (a veth pair dies with either end's namespace, the bridge with the hub).
func removeRun(ctx context.Context, tag string) error {
	names := runNamespaces(tag)
	inodes := map[uint64]bool{}
	for _, name := range names {
		if ino, err := nsInode(name); err == nil {
			inodes[ino] = true
		}
	}
	if len(inodes) > 0 {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			pids := pidsIn(ctx, inodes)
			if len(pids) == 0 && ctx.Err() == nil {
				break
			}
			for pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("run %s: processes still in its namespaces when the time ran out: %v", tag, pids)
			case <-tk.C:
			}
		}
	}
	var errs []string
	for _, name := range names {
		_, err := ipCmd("netns", "del", name)
		if _, serr := os.Stat(filepath.Join(netnsDir, name)); err != nil && serr == nil {
			// Gone meanwhile is fine: the janitor and a later run's
			// leftover removal may both be at it.
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("run %s: %s", tag, strings.Join(errs, "; "))
	}
	return nil
}

// removeLeftovers removes what earlier runs whose test process is gone
// left behind: their namespaces (and the processes in them). Links named
// with the prefix in the root namespace are deleted too: older versions of
// the suite put their bridge and veths there.
func removeLeftovers(t testing.TB) {
	t.Helper()
	deadTag := func(name string) (string, bool) {
		rest, ok := strings.CutPrefix(name, namePrefix)
		if !ok {
			return "", false
		}
		end := 0
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		pid, err := strconv.Atoi(rest[:end])
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			return "", false
		}
		return namePrefix + rest[:end], true
	}
	tags := map[string]bool{}
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if tag, ok := deadTag(e.Name()); ok {
			tags[tag] = true
		}
	}
	for tag := range tags {
		t.Logf("removing leftovers of run %s: namespaces %v", tag, runNamespaces(tag))
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
		err := removeRun(ctx, tag)
		cancel()
		if err != nil {
			t.Fatalf("leftovers of an earlier run: %v", err)
		}
	}
	if out, err := ipCmd("-o", "link", "show"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if _, ok := deadTag(name); ok {
				t.Logf("removing leftover root-namespace link %s of an older suite", name)
				_, _ = ipCmd("link", "del", name)
			}
		}
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(st, ')')
	return i >= 0 && i+2 < len(st) && st[i+2] != 'Z' && st[i+2] != 'X'
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
		out, err := ipCmd(args...)
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
