package vm

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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/visorhq/visor/internal/janitor"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// namePrefix starts the name of the suite's network namespace; the test
// process's pid follows ("vsrv<pid>-net"), so the leftovers of a run whose
// process is gone are known by name.
const namePrefix = "vsrv"

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// testNet is the suite's only address range (RFC 5737 TEST-NET-2), used
// inside the suite's namespace only.
var testNet = netip.MustParsePrefix("198.51.100.0/24")

// bridge is the bridge in the suite's namespace; every guest's tap is on it.
const bridge = "br0"

// network is the suite's namespace: the bridge with the etcd members'
// addresses (.1, .2, .3) and one tap per guest. qemu and etcd run inside
// it; nothing of it is in the root namespace.
type network struct {
	tag string // namePrefix + pid
	ns  string // namespace name
	jan *janitor.Janitor
}

// ipCmd runs ip with args and returns its output.
func ipCmd(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// checkRangeUnused fails unless no address or route of the root namespace
// touches testNet: the suite's range must not shadow anything the machine
// uses, even though the suite's own addresses stay in its namespace.
func checkRangeUnused(t testing.TB) {
	t.Helper()
	for _, args := range [][]string{{"-o", "-4", "addr", "show"}, {"-4", "route", "show", "table", "all"}} {
		out, err := ipCmd(args...)
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
func memberAddr(i int) netip.Addr {
	b := testNet.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

// guestAddr is the i-th (1-based) guest's address.
func guestAddr(i int) netip.Addr {
	b := testNet.Addr().As4()
	b[3] = byte(10 + i)
	return netip.AddrFrom4(b)
}

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
	for _, args := range [][]string{
		{"netns", "add", n.ns},
		{"-n", n.ns, "link", "set", "lo", "up"},
		{"-n", n.ns, "link", "add", bridge, "type", "bridge"},
		{"-n", n.ns, "addr", "add", memberAddr(1).String() + "/24", "dev", bridge},
		{"-n", n.ns, "addr", "add", memberAddr(2).String() + "/24", "dev", bridge},
		{"-n", n.ns, "addr", "add", memberAddr(3).String() + "/24", "dev", bridge},
		{"-n", n.ns, "link", "set", bridge, "up"},
	} {
		if _, err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
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
		if _, err := ipCmd(args...); err != nil {
			return err
		}
	}
	return nil
}

// inNS runs fn on a goroutine locked to an OS thread that has entered the
// suite's namespace (sockets keep the namespace they were made in), and
// returns the thread to its own namespace before unlocking; should that
// fail, the thread ends with the goroutine, so no other goroutine ever runs
// in the namespace.
func (n *network) inNS(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := n.inNSLocked(fn)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

func (n *network) inNSLocked(fn func() error) (restored bool, err error) {
	own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return true, fmt.Errorf("open own namespace: %w", err)
	}
	defer unix.Close(own)
	ns, err := unix.Open(filepath.Join(netnsDir, n.ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return true, fmt.Errorf("open the suite's namespace: %w", err)
	}
	defer unix.Close(ns)
	if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("enter the suite's namespace: %w", err)
	}
	err = fn()
	return unix.Setns(own, unix.CLONE_NEWNET) == nil, err
}

// dial connects to addr from inside the suite's namespace (the etcd
// client's dialer).
func (n *network) dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.inNS(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// listen listens on addr inside the suite's namespace.
func (n *network) listen(addr string) (net.Listener, error) {
	var l net.Listener
	err := n.inNS(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
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
func nsInode(name string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(netnsDir, name), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// pidsIn returns the live processes whose network namespace has inode ino.
func pidsIn(ino uint64) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	want := "net:[" + strconv.FormatUint(ino, 10) + "]"
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/net"); err == nil && l == want && processAlive(pid) {
			out = append(out, pid)
		}
	}
	return out
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

// runDir is the directory of run tag's guest disks and sockets.
func runDir(tag string) string { return filepath.Join(os.TempDir(), tag+"-vm") }

// removeRun kills every process in run tag's namespace (the qemu guests
// and etcd members) until none is left, deletes the namespace (its taps
// and bridge go with it) and the run's directory of overlay disks.
func removeRun(ctx context.Context, tag string) error {
	ns := tag + "-net"
	if ino, err := nsInode(ns); err == nil {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			pids := pidsIn(ino)
			if len(pids) == 0 {
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("run %s: processes still in its namespace when the time ran out: %v", tag, pids)
			case <-tk.C:
			}
		}
		if _, err := ipCmd("netns", "del", ns); err != nil {
			if _, serr := os.Stat(filepath.Join(netnsDir, ns)); serr == nil {
				return err
			}
		}
	}
	return os.RemoveAll(runDir(tag))
}

// removeLeftovers removes what earlier runs whose test process is gone
// left behind: their namespaces, the processes in them, their disks.
func removeLeftovers(t testing.TB) {
	t.Helper()
	tags := map[string]bool{}
	for _, dir := range []string{netnsDir, os.TempDir()} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			rest, ok := strings.CutPrefix(e.Name(), namePrefix)
			if !ok {
				continue
			}
			digits, _, _ := strings.Cut(rest, "-")
			pid, err := strconv.Atoi(digits)
			if err != nil || pid == os.Getpid() || processAlive(pid) {
				continue
			}
			tags[namePrefix+digits] = true
		}
	}
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
