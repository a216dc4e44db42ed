package netnstest

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
)

// Dir is where `ip netns` keeps its named namespaces.
const Dir = "/run/netns"

// Bridge is the name of the bridge NewBridgeNS makes in its namespace.
const Bridge = "br0"

// Net is the harnesses' only address range (RFC 5737 TEST-NET-2), used
// inside their namespaces only.
var Net = netip.MustParsePrefix("198.51.100.0/24")

// Addr is the address of Net whose last byte is i.
func Addr(i int) netip.Addr {
	b := Net.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

// Require skips the test, saying why, unless it runs as root; as root it
// fails when the ip command is missing (a root run must not skip quietly:
// CI runs these suites as root). suite names the caller in the messages.
func Require(t testing.TB, suite string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("%s needs root (network namespaces, bridges); skipped as non-root", suite)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("%s needs the ip command (iproute2: apt-get install iproute2); not found in PATH", suite)
	}
}

// IP runs ip with args and returns its output; the error carries the
// command and its output.
func IP(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// NewBridgeNS creates namespace ns with its loopback up and bridge Bridge
// holding addrs (each with Net's prefix length), up. On an error it
// deletes what it made and returns the error.
func NewBridgeNS(ns string, addrs ...netip.Addr) error {
	cmds := [][]string{
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "add", Bridge, "type", "bridge"},
	}
	for _, a := range addrs {
		cmds = append(cmds, []string{"-n", ns, "addr", "add", netip.PrefixFrom(a, Net.Bits()).String(), "dev", Bridge})
	}
	cmds = append(cmds, []string{"-n", ns, "link", "set", Bridge, "up"})
	if _, err := IP("netns", "add", ns); err != nil {
		return err
	}
	for _, args := range cmds {
		if _, err := IP(args...); err != nil {
			_, _ = IP("netns", "del", ns)
			return err
		}
	}
	return nil
}

// Exists reports whether namespace ns exists.
func Exists(ns string) bool {
	_, err := os.Stat(filepath.Join(Dir, ns))
	return err == nil
}

// Namespaces lists the named namespaces whose name starts with prefix.
func Namespaces(prefix string) []string {
	ents, _ := os.ReadDir(Dir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// Inode returns the inode of named namespace ns (the number in
// /proc/<pid>/ns/net's "net:[N]").
func Inode(ns string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(Dir, ns), &st); err != nil {
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

// PidsIn returns the live processes whose network namespace is one of
// inodes (pid -> inode); it stops early, with what it has, when ctx ends.
func PidsIn(ctx context.Context, inodes map[uint64]bool) map[int]uint64 {
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
		if ino, ok := netnsOf(pid); ok && inodes[ino] && ProcessAlive(pid) {
			out[pid] = ino
		}
	}
	return out
}

// ProcessAlive reports whether pid exists and is not a zombie.
func ProcessAlive(pid int) bool {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(st, ')')
	return i >= 0 && i+2 < len(st) && st[i+2] != 'Z' && st[i+2] != 'X'
}

// StartTime returns pid's start time (field 22 of /proc/<pid>/stat),
// false for a process that is gone or a zombie: with the pid, it names a
// process across pid reuse (a harness's kill test checks that the very
// processes it saw are gone).
func StartTime(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return "", false
	}
	return f[19], true
}

// RemoveNamespaces kills every process in namespaces names until none is
// left, then deletes them; the links inside go with them (a veth pair dies
// with either end's namespace, a bridge with its own). A namespace already
// gone is not an error: a janitor and a later run's leftover removal may
// both be at it. It gives up when ctx ends, naming the processes left.
func RemoveNamespaces(ctx context.Context, names []string) error {
	inodes := map[uint64]bool{}
	for _, name := range names {
		if ino, err := Inode(name); err == nil {
			inodes[ino] = true
		}
	}
	if len(inodes) > 0 {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			pids := PidsIn(ctx, inodes)
			if len(pids) == 0 && ctx.Err() == nil {
				break
			}
			for pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("processes still in namespaces %v when the time ran out: %v", names, pids)
			case <-tk.C:
			}
		}
	}
	var errs []string
	for _, name := range names {
		if _, err := IP("netns", "del", name); err != nil && Exists(name) {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// DeadRun returns the tag (prefix and pid) of name when name is prefix,
// a pid, and anything after, and that process is gone (not this one):
// the leftover of a run that died.
func DeadRun(prefix, name string) (tag string, ok bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return "", false
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	pid, err := strconv.Atoi(rest[:end])
	if err != nil || pid == os.Getpid() || ProcessAlive(pid) {
		return "", false
	}
	return prefix + rest[:end], true
}

// DeadRuns returns the tags of dead runs (DeadRun) among the entries of
// dirs (Dir for namespaces; a harness may add its own directories).
func DeadRuns(prefix string, dirs ...string) map[string]bool {
	tags := map[string]bool{}
	for _, dir := range dirs {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if tag, ok := DeadRun(prefix, e.Name()); ok {
				tags[tag] = true
			}
		}
	}
	return tags
}

// InNS runs fn on a goroutine locked to an OS thread that has entered
// namespace ns (a socket keeps the namespace it was made in), while the
// process stays in its own. The thread goes back to its own namespace
// before it is unlocked; should that fail, the goroutine ends still
// locked and the runtime ends the thread, so that no other goroutine ever
// runs in ns. The thread is kept when it can be: a child's parent-death
// signal (Pdeathsig) fires when the thread that started it ends. InNS
// waits for fn.
func InNS(ns string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := inNSLocked(ns, fn)
		if restored {
			runtime.UnlockOSThread()
		}
		ch <- err
	}()
	return <-ch
}

// inNSLocked does InNS's work on a locked thread; restored reports
// whether the thread is back in its own namespace.
func inNSLocked(ns string, fn func() error) (restored bool, err error) {
	own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return true, fmt.Errorf("open own namespace: %w", err)
	}
	defer unix.Close(own)
	fd, err := unix.Open(filepath.Join(Dir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return true, fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	err = fn()
	return unix.Setns(own, unix.CLONE_NEWNET) == nil, err
}

// Dial connects to addr over TCP from inside namespace ns (for example as
// an etcd client's dialer).
func Dial(ctx context.Context, ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNS(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// Listen listens on TCP address addr inside namespace ns.
func Listen(ns, addr string) (net.Listener, error) {
	var l net.Listener
	err := InNS(ns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// DieWithParent asks the kernel to SIGKILL this test process when its
// parent (go test) dies, so that kill -9 of go test ends a suite too (its
// children follow by their own parent-death signal, and a janitor removes
// the rest). The signal is armed on the calling thread and fires when the
// parent dies only while that thread lives: call it from TestMain, whose
// goroutine stays locked to the thread for the life of the process. It
// exits at once if the parent died before the signal was armed.
func DieWithParent(suite string) {
	runtime.LockOSThread() // for good: see above
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "%s: cannot arm the parent-death signal: %v\n", suite, err)
		return
	}
	if os.Getppid() != ppid {
		os.Exit(2)
	}
}
