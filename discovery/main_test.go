package discovery

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/testtime"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(etcdtest.WithShared(m))
}

// testLogger routes a component's log to the test's output.
func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Output: t.Output(), Level: hclog.Debug})
}

// fixture is one embedded etcd with a Store on a fresh prefix.
type fixture struct {
	cli    *clientv3.Client
	prefix string
	store  *Store
	ctx    context.Context
}

// newFixture is a store under a fresh prefix on the package's shared etcd.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	return fixtureOn(t, etcdtest.Shared(t))
}

// newOwnFixture is newFixture on an etcd member of the test's own, for a
// test that compacts or compares revisions (which others' writes move).
func newOwnFixture(t *testing.T) *fixture {
	t.Helper()
	return fixtureOn(t, etcdtest.New(t))
}

func fixtureOn(t *testing.T, c *etcdtest.Cluster) *fixture {
	t.Helper()
	cli := c.Client(t)
	prefix := etcdtest.Prefix(t)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(60*time.Second))
	t.Cleanup(cancel)
	return &fixture{cli: cli, prefix: prefix, store: NewStore(cli, prefix, testLogger(t)), ctx: ctx}
}

// keys counts the keys stored under the fixture's services prefix.
func (f *fixture) keys(t testing.TB) int64 {
	t.Helper()
	resp, err := f.cli.Get(f.ctx, f.prefix+"services/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count keys: %v", err)
	}
	return resp.Count
}

func (f *fixture) revision(t testing.TB) int64 {
	t.Helper()
	resp, err := f.cli.Get(f.ctx, "revision-probe")
	if err != nil {
		t.Fatalf("revision: %v", err)
	}
	return resp.Header.Revision
}

// runRegistrar runs r.Run until the test ends.
func runRegistrar(t *testing.T, r *Registrar) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("registrar run: %v", err)
		}
	})
}

func instanceEndpoint(service, version, id, addr string, port int, healthy bool) Endpoint {
	return Endpoint{Service: service, Version: version, ID: id, Host: "h1", Addr: addr, Port: port, Healthy: healthy, Source: SourceInstance}
}

func clientOptAttachedKeys() clientv3.LeaseOption { return clientv3.WithAttachedKeys() }
