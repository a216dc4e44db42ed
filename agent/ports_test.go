package agent

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// TestAgentFreesPortOfEndedInstance: an instance whose process exits with
// restart policy never gives its port back once it is exited, so the port
// range (one port here) is not used up by instances that ended; and an
// agent restarted on the same data directory reserves no port for the
// restored terminal instance.
func TestAgentFreesPortOfEndedInstance(t *testing.T) {
	f := newFixture(t)
	l, err := net.Listen("tcp", ":0")
	must(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	must(t, l.Close())
	_, err = f.reg.SetProcType(f.ctx, registry.ProcType{
		App: "demo", Name: "web",
		Command: "exec " + strings.Join(proctest.Command("exit", "0"), " "),
		Env:     map[string]string{proctest.EnvVar: "1"},
		Restart: registry.RestartPolicy{Policy: "never"},
	})
	must(t, err)
	dir := t.TempDir()
	onePort := func(c *Config) { c.PortMin, c.PortMax = port, port; c.DisableReconciler = true }
	a := f.startAgent(t, "host-a", dir, onePort)
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)

	var in registry.Instance
	proctest.WaitFor(t, 20*time.Second, "instance exited in the registry", func() bool {
		insts, err := f.reg.AppInstances(f.ctx, "demo")
		if err != nil || len(insts) != 1 {
			return false
		}
		in = insts[0]
		return in.State.Terminal()
	})
	if in.State != registry.InstanceExited || in.Port != port {
		t.Fatalf("instance: state %s port %d; want exited on port %d", in.State, in.Port, port)
	}
	// The port is freed as the agent learns the terminal state, before it
	// is written: no wait.
	if o := a.ports.owner(port); o != "" {
		t.Fatalf("port %d still held by %q after the instance exited", port, o)
	}
	a.stop(t)

	b := f.startAgent(t, "host-a", dir, onePort)
	proctest.WaitFor(t, 10*time.Second, "agent restored its instances", func() bool {
		return b.HTTPAddr() != "" // set after the restored instances are noted
	})
	if !b.sup.Has(in.ID) {
		t.Fatalf("instance %s not restored", in.ID)
	}
	if o := b.ports.owner(port); o != "" {
		t.Errorf("port %d reserved for %q, a restored terminal instance", port, o)
	}
}

// TestPortAllocatorReserveAndFreeCheckOwner: Reserve never takes a port
// from another instance, and Free only frees a port its owner holds, so a
// late or repeated Free cannot release a port given to someone else.
func TestPortAllocatorReserveAndFreeCheckOwner(t *testing.T) {
	p := newPortAllocator(31010, 31010)
	if !p.Reserve(31010, "a") || !p.Reserve(31010, "a") {
		t.Fatalf("Reserve of a free port, or again by its owner, refused")
	}
	if p.Reserve(31010, "b") || p.owner(31010) != "a" {
		t.Fatalf("Reserve took a's port for b (owner %q)", p.owner(31010))
	}
	p.Free(31010, "b")
	if p.owner(31010) != "a" {
		t.Fatalf("Free by a non-owner released the port")
	}
	p.Free(31010, "a")
	p.Free(31010, "a")
	if p.owner(31010) != "" {
		t.Fatalf("Free by the owner kept the port")
	}
}

func TestEphemeralOverlap(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ip_local_port_range")
	must(t, os.WriteFile(file, []byte("32768\t60999\n"), 0o644))
	cases := []struct {
		first, last int
		lo, hi      int
		ok          bool
	}{
		{20000, 29999, 0, 0, false}, // the default range
		{20000, 32767, 0, 0, false},
		{20000, 32768, 32768, 32768, true},
		{30000, 59999, 32768, 59999, true},
		{40000, 40099, 40000, 40099, true},
		{61000, 65535, 0, 0, false},
		{30000, 65535, 32768, 60999, true},
	}
	for _, c := range cases {
		lo, hi, ok := ephemeralOverlap(c.first, c.last, file)
		if ok != c.ok || (ok && (lo != c.lo || hi != c.hi)) {
			t.Errorf("ephemeralOverlap(%d, %d) = %d, %d, %v; want %d, %d, %v", c.first, c.last, lo, hi, ok, c.lo, c.hi, c.ok)
		}
	}
	for _, bad := range []string{"", "32768", "a b", "1 2 3"} {
		must(t, os.WriteFile(file, []byte(bad), 0o644))
		if _, _, ok := ephemeralOverlap(1, 65535, file); ok {
			t.Errorf("ephemeralOverlap with range file %q: overlap reported", bad)
		}
	}
	if _, _, ok := ephemeralOverlap(1, 65535, filepath.Join(t.TempDir(), "absent")); ok {
		t.Error("ephemeralOverlap without a range file: overlap reported")
	}
}
