package agent

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// The session state and the lease file alone: no etcd (the session is a
// zero registry.HostSession, only compared, never called).

func TestSessionState(t *testing.T) {
	var told []bool
	st := newSessionState(func(up bool) { told = append(told, up) })
	if st.current() != nil {
		t.Fatal("a new session state has a session")
	}
	if w, _ := st.forWriter(); w != nil {
		t.Fatalf("forWriter without a session = %#v, want a nil interface", w)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := st.disconnected(t0); !got.Equal(t0) {
		t.Errorf("first disconnected(t0) = %s, want t0", got)
	}
	if got := st.disconnected(t0.Add(time.Minute)); !got.Equal(t0) {
		t.Errorf("disconnected again = %s, want still t0", got)
	}

	s := &registry.HostSession{}
	_, changed := st.currentAndChange()
	st.set(s)
	select {
	case <-changed:
	default:
		t.Error("set did not close the channel of the session before")
	}
	cur, changed2 := st.currentAndChange()
	if cur != s || st.current() != s {
		t.Error("current is not the session set")
	}
	if w, _ := st.forWriter(); w != writerSession(s) {
		t.Errorf("forWriter = %#v, want the session set", w)
	}
	// Connected: disconnected counts from the next loss.
	t1 := t0.Add(time.Hour)
	if got := st.disconnected(t1); !got.Equal(t1) {
		t.Errorf("disconnected after a session = %s, want t1 (not t0)", got)
	}

	st.set(s)
	before := time.Now()
	st.set(nil)
	select {
	case <-changed2:
	default:
		t.Error("set did not close the channel of the session before")
	}
	if st.current() != nil {
		t.Error("a session after set(nil)")
	}
	if got := st.disconnected(time.Now().Add(time.Hour)); got.Before(before) {
		t.Errorf("disconnected since %s, want from set(nil), not before %s", got, before)
	}
	if want := []bool{true, true, false}; !slices.Equal(told, want) {
		t.Errorf("connected told %v, want %v", told, want)
	}
}

func TestLeaseFile(t *testing.T) {
	dir := t.TempDir()
	f := leaseFile(filepath.Join(dir, "lease"))
	if _, ok := f.load(); ok {
		t.Error("load of a missing file succeeded")
	}
	f.save(0x694d8a1b2c3d4e5f)
	if id, ok := f.load(); !ok || id != 0x694d8a1b2c3d4e5f {
		t.Errorf("load = %x, %v; want the lease saved", id, ok)
	}
	f.save(0x10)
	if id, ok := f.load(); !ok || id != 0x10 {
		t.Errorf("load after a second save = %x, %v; want 10", id, ok)
	}
	if _, err := os.Stat(string(f) + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("the temporary file is left: %v", err)
	}
	must(t, os.WriteFile(string(f), []byte("not hex\n"), 0o600))
	if _, ok := f.load(); ok {
		t.Error("load of a file that does not parse succeeded")
	}
	must(t, os.WriteFile(string(f), []byte(" 2a\n"), 0o600))
	if id, ok := f.load(); !ok || id != 0x2a {
		t.Errorf("load with spaces = %x, %v; want 2a", id, ok)
	}
}
