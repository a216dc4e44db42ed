package netnstest

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// TestBridgeNamespaceLifecycle (root): NewBridgeNS makes a namespace whose
// bridge holds the given addresses and is up; a listener and a dialer made
// from inside it (InNS) reach each other there while the root namespace
// gains no link or address; RemoveNamespaces kills the process left in it
// and deletes it.
func TestBridgeNamespaceLifecycle(t *testing.T) {
	Require(t, "netnstest")
	ns := "vsrn" + strconv.Itoa(os.Getpid()) + "-t"
	rootBefore := rootAddrs(t)
	if err := NewBridgeNS(ns, Addr(1), Addr(2)); err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			_ = RemoveNamespaces(context.Background(), []string{ns})
		}
	})
	out, err := IP("-n", ns, "-o", "addr", "show", "dev", Bridge)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.51.100.1/24", "198.51.100.2/24"} {
		if !strings.Contains(out, a) {
			t.Errorf("bridge lacks %s: %s", a, out)
		}
	}
	if got := Namespaces("vsrn" + strconv.Itoa(os.Getpid())); len(got) != 1 || got[0] != ns {
		t.Errorf("Namespaces = %v, want [%s]", got, ns)
	}
	if rootAddrs(t) != rootBefore {
		t.Error("the root namespace's addresses changed")
	}

	l, err := Listen(ns, Addr(1).String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		accepted <- string(b)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(10*time.Second))
	defer cancel()
	c, err := Dial(ctx, ns, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.Close()
	if got := <-accepted; got != "hello" {
		t.Errorf("listener in the namespace read %q, want hello", got)
	}
	// The same address is not reachable from the root namespace.
	var d net.Dialer
	if rc, err := d.DialContext(ctx, "tcp", l.Addr().String()); err == nil {
		rc.Close()
		t.Errorf("%s reachable from the root namespace", l.Addr())
	}

	// A process left in the namespace is killed by the removal.
	cmd := exec.Command("ip", "netns", "exec", ns, "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	ino, err := Inode(ns)
	if err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 10*time.Second, "the sleep inside the namespace", func() bool {
		return len(PidsIn(ctx, map[uint64]bool{ino: true})) > 0
	})
	if err := RemoveNamespaces(ctx, []string{ns}); err != nil {
		t.Fatal(err)
	}
	removed = true
	select {
	case <-exited:
	case <-ctx.Done():
		t.Fatal("the process in the namespace outlived its removal")
	}
	if Exists(ns) {
		t.Errorf("namespace %s still exists", ns)
	}
	// Removing it again is not an error.
	if err := RemoveNamespaces(ctx, []string{ns}); err != nil {
		t.Errorf("second removal: %v", err)
	}
}

// TestDeadRun: a name of a live process's run (this one) is not a dead
// run; a pid that cannot exist is; other names are neither. StartTime
// knows this process and not a gone one.
func TestDeadRun(t *testing.T) {
	self := "vsrx" + strconv.Itoa(os.Getpid()) + "-hub"
	if _, ok := DeadRun("vsrx", self); ok {
		t.Errorf("%s (this process) counted as dead", self)
	}
	if tag, ok := DeadRun("vsrx", "vsrx999999999-hub"); !ok || tag != "vsrx999999999" {
		t.Errorf("DeadRun of a gone pid = %q, %v; want vsrx999999999, true", tag, ok)
	}
	for _, name := range []string{"other1-hub", "vsrx-hub", "vsrxabc"} {
		if tag, ok := DeadRun("vsrx", name); ok {
			t.Errorf("DeadRun(%q) = %q, want not a run", name, tag)
		}
	}
	if st, ok := StartTime(os.Getpid()); !ok || st == "" {
		t.Errorf("StartTime(self) = %q, %v", st, ok)
	}
	if _, ok := StartTime(999999999); ok {
		t.Error("StartTime of a gone pid reported a process")
	}
	if Addr(11).String() != "198.51.100.11" {
		t.Errorf("Addr(11) = %s", Addr(11))
	}
}

// rootAddrs is the root namespace's addresses, one sorted line each,
// without lifetimes.
func rootAddrs(t *testing.T) string {
	t.Helper()
	out, err := IP("-o", "addr", "show")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "valid_lft"); i >= 0 {
			l = l[:i]
		}
		lines = append(lines, strings.TrimSpace(l))
	}
	return strings.Join(lines, "\n")
}
