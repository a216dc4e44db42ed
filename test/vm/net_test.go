package vm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/janitor"
	"github.com/visorhq/visor/internal/netnstest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// namePrefix starts the name of the suite's network namespace; the test
// process's pid follows ("vsrv<pid>-net"), so the leftovers of a run whose
// process is gone are known by name.
const namePrefix = "vsrv"

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = netnstest.Dir

// bridge is the bridge in the suite's namespace; every guest's tap is on it.
const bridge = netnstest.Bridge

// network is the suite's namespace: the bridge with the etcd members'
// addresses (.1, .2, .3) and one tap per guest. qemu and etcd run inside
// it; nothing of it is in the root namespace.
type network struct {
	tag string // namePrefix + pid
	ns  string // namespace name
	jan *janitor.Janitor
}

// checkRangeUnused fails unless no address or route of the root namespace
// touches testNet: the suite's range must not shadow anything the machine
// uses, even though the suite's own addresses stay in its namespace.
func checkRangeUnused(t testing.TB) {
	t.Helper()
	for _, args := range [][]string{{"-o", "-4", "addr", "show"}, {"-4", "route", "show", "table", "all"}} {
		out, err := netnstest.IP(args...)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "198.51.100.") {
				t.Fatalf("198.51.100.0/24 is in use on this machine (%q in `ip %s`); the VM suite needs it unused", strings.TrimSpace(l), strings.Join(args, " "))
			}
		}
	}
}

// memberAddr is the i-th (1-based) etcd member's address on the bridge.
func memberAddr(i int) netip.Addr { return netnstest.Addr(i) }

// guestAddr is the i-th (1-based) guest's address.
func guestAddr(i int) netip.Addr { return netnstest.Addr(10 + i) }

// newNetwork removes the leftovers of dead runs, starts the run's janitor,
// then creates the namespace with the bridge and the members' addresses.
// The janitor runs before the namespace exists, so a kill of the test at
// any later point leaves nothing behind.
func newNetwork(t testing.TB) *network {
	t.Helper()
	removeLeftovers(t)
	tag := namePrefix + strconv.Itoa(os.Getpid())
	jan, err := startJanitor(tag)
	if err != nil {
		t.Fatal(err)
	}
	n := &network{tag: tag, ns: tag + "-net", jan: jan}
	made := false
	defer func() {
		if !made {
			n.teardown(t)
		}
	}()
	if err := netnstest.NewBridgeNS(n.ns, memberAddr(1), memberAddr(2), memberAddr(3)); err != nil {
		t.Fatal(err)
	}
	made = true
	return n
}

// addTap creates tap name on the bridge (on a separate bridge-less link
// when detached: the template guest talks to nobody).
func (n *network) addTap(name string, detached bool) error {
	cmds := [][]string{{"-n", n.ns, "tuntap", "add", "dev", name, "mode", "tap"}}
	if !detached {
		cmds = append(cmds, []string{"-n", n.ns, "link", "set", name, "master", bridge})
	}
	cmds = append(cmds, []string{"-n", n.ns, "link", "set", name, "up"})
	for _, args := range cmds {
		if _, err := netnstest.IP(args...); err != nil {
			return err
		}
	}
	return nil
}

// dial connects to addr from inside the suite's namespace (the etcd
// client's dialer).
func (n *network) dial(ctx context.Context, addr string) (net.Conn, error) {
	return netnstest.Dial(ctx, n.ns, addr)
}

// listen listens on addr inside the suite's namespace.
func (n *network) listen(addr string) (net.Listener, error) {
	return netnstest.Listen(n.ns, addr)
}

// teardown has the janitor kill every process in the namespace (qemu,
// etcd) and delete it, and waits (bounded) for it; if the janitor fails,
// the test process does the same itself.
func (n *network) teardown(t testing.TB) {
	t.Helper()
	if err := n.jan.Finish(testtime.Scaled(60 * time.Second)); err != nil {
		t.Errorf("janitor: %v; removing the namespace from the test process", err)
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(60*time.Second))
		defer cancel()
		if err := removeRun(ctx, n.tag); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(netnsDir, n.ns)); err == nil {
		t.Errorf("namespace %s left after teardown", n.ns)
	}
}

// nsInode returns the inode of a named network namespace.
func nsInode(name string) (uint64, error) { return netnstest.Inode(name) }

// pidsIn returns the live processes whose network namespace has inode ino.
func pidsIn(ino uint64) []int {
	var out []int
	for pid := range netnstest.PidsIn(context.Background(), map[uint64]bool{ino: true}) {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

// runDir is the directory of run tag's guest disks and sockets.
func runDir(tag string) string { return filepath.Join(os.TempDir(), tag+"-vm") }

// removeRun kills every process in run tag's namespace (the qemu guests
// and etcd members) until none is left, deletes the namespace (its taps
// and bridge go with it) and the run's directory of overlay disks.
func removeRun(ctx context.Context, tag string) error {
	if err := netnstest.RemoveNamespaces(ctx, []string{tag + "-net"}); err != nil {
		return fmt.Errorf("run %s: %w", tag, err)
	}
	return os.RemoveAll(runDir(tag))
}

// removeLeftovers removes what earlier runs whose test process is gone
// left behind: their namespaces, the processes in them, their disks.
func removeLeftovers(t testing.TB) {
	t.Helper()
	tags := netnstest.DeadRuns(namePrefix, netnsDir, os.TempDir())
	for tag := range tags {
		t.Logf("removing leftovers of run %s", tag)
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(60*time.Second))
		err := removeRun(ctx, tag)
		cancel()
		if err != nil {
			t.Fatalf("leftovers of an earlier run: %v", err)
		}
	}
}

// janitorEnv starts the test binary as the janitor of run <value>: it waits
// for EOF on its stdin, then removes everything of the run (removeRun); see
// internal/janitor for how it outlives the test.
const janitorEnv = "VISOR_VM_JANITOR"

// startJanitor starts the janitor of run tag.
func startJanitor(tag string) (*janitor.Janitor, error) {
	return janitor.Start(proctest.Binary(), janitorEnv, tag)
}

// janitorMain is the janitor process: it returns its exit code.
func janitorMain(tag string) int { return janitor.Main(tag, 2*time.Minute, removeRun) }
