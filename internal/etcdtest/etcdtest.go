package etcdtest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/visorhq/visor/internal/embedetcd"
)

// Cluster is one embedded etcd member started for a test.
type Cluster struct {
	t      testing.TB
	cfg    embedetcd.Config
	mu     sync.Mutex // guards srv
	srv    *embedetcd.Server
	closed bool
	shared bool // the member of Shared: not to be stopped by a test
}

var prefixSeq atomic.Int64

// New starts an embedded etcd member and registers its shutdown with
// t.Cleanup. It skips the test under -short.
func New(t testing.TB) *Cluster {
	t.Helper()
	return NewWith(t, nil)
}

// NewWith is New with the member's configuration adjusted by mod (for
// example a lower MaxTxnOps) before it starts.
func NewWith(t testing.TB, mod func(*embedetcd.Config)) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("etcdtest: skipped in -short mode (starts an embedded etcd)")
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		cport, pport := freePort(t), freePort(t)
		cfg := embedetcd.Config{
			Dir:       t.TempDir(),
			Name:      "test",
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", cport),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", pport),
			Unsafe:    true,
		}
		if mod != nil {
			mod(&cfg)
		}
		srv, err := start(cfg)
		if err != nil {
			// A free port can be taken between probing and binding; try again.
			lastErr = err
			continue
		}
		c := &Cluster{t: t, cfg: cfg, srv: srv}
		t.Cleanup(c.close)
		return c
	}
	t.Fatalf("etcdtest: start embedded etcd: %v", lastErr)
	return nil
}

func start(cfg embedetcd.Config) (*embedetcd.Server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return embedetcd.Start(ctx, cfg)
}

// Stop stops the member, keeping its data directory and ports, to simulate
// an etcd outage. Start brings it back.
func (c *Cluster) Stop() {
	if c.shared {
		panic("etcdtest: Stop on the shared member; a test that stops etcd needs its own (New)")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv != nil {
		c.srv.Close()
		c.srv = nil
	}
}

// Start restarts a stopped member on the same ports with the same data.
func (c *Cluster) Start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv != nil || c.closed {
		return
	}
	srv, err := start(c.cfg)
	if err != nil {
		c.t.Fatalf("etcdtest: restart embedded etcd: %v", err)
	}
	c.srv = srv
}

func (c *Cluster) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.srv != nil {
		c.srv.Close()
		c.srv = nil
	}
}

// Endpoints returns the client endpoints of the member.
func (c *Cluster) Endpoints() []string { return []string{c.cfg.ClientURL} }

// Client returns a new client connected to the member, closed at cleanup.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Prefix returns a key prefix unique to this test, so that several tests can
// share one member.
func Prefix(t testing.TB) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(strings.ToLower(t.Name()))
	return fmt.Sprintf("/t%d-%s/", prefixSeq.Add(1), name)
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
