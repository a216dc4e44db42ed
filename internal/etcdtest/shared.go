package etcdtest

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/visorhq/visor/internal/embedetcd"
)

// The shared member of this test binary (etcd's integration.LazyCluster
// idea): started by the first Shared call, stopped by the Run of the
// TestingM that WithShared wraps.
var shared struct {
	mu  sync.Mutex
	c   *Cluster
	dir string
}

// Shared returns the member shared by every test of this test binary that
// needs nothing but keys of its own, starting it at first use. It saves a
// member start (about a second under -race) per test; tests keep apart by
// working under their own Prefix, so they may run in parallel. A test that
// stops the member, compacts, sets its configuration or counts anything
// outside its prefix (leases, revisions) needs its own (New).
//
// The package's TestMain must wrap m with WithShared, which stops the
// member after the tests; Shared fails the test otherwise. It skips under
// -short, like New.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("etcdtest: skipped in -short mode (starts an embedded etcd)")
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !wrapped {
		t.Fatal("etcdtest: Shared needs TestMain to run the tests through etcdtest.WithShared(m)")
	}
	if shared.c != nil {
		return shared.c
	}
	dir, err := os.MkdirTemp("", "visor-etcdtest-shared-")
	if err != nil {
		t.Fatalf("etcdtest: shared member dir: %v", err)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		cport, pport := freePort(t), freePort(t)
		cfg := embedetcd.Config{
			Dir:       fmt.Sprintf("%s/%d", dir, attempt),
			Name:      "shared",
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", cport),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", pport),
			Unsafe:    true,
		}
		srv, err := start(cfg)
		if err != nil {
			lastErr = err // a port taken between probe and bind: try again
			continue
		}
		shared.c = &Cluster{cfg: cfg, srv: srv, shared: true}
		shared.dir = dir
		return shared.c
	}
	os.RemoveAll(dir)
	t.Fatalf("etcdtest: start shared embedded etcd: %v", lastErr)
	return nil
}

// wrapped is set once WithShared's Run has begun.
var wrapped bool

// TestingM is what testing.M and goleak.VerifyTestMain have in common.
type TestingM interface{ Run() int }

// WithShared wraps m so that the member Shared starts is stopped once the
// tests have run, before anything checks for leaked goroutines:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(etcdtest.WithShared(m)) }
func WithShared(m TestingM) TestingM { return sharedM{m} }

type sharedM struct{ m TestingM }

func (s sharedM) Run() int {
	shared.mu.Lock()
	wrapped = true
	shared.mu.Unlock()
	code := s.m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.c != nil {
		shared.c.close()
		shared.c = nil
		os.RemoveAll(shared.dir)
	}
	return code
}
