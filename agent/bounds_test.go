package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// unixClient returns an HTTP client of the agent's unix socket in dir.
func unixClient(dir string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "run", SocketName))
		},
	}}
}

// metricValue returns the value of the sample line starting with name in
// the agent's /metrics, or -1.
func metricValue(t *testing.T, c *http.Client, name string) float64 {
	t.Helper()
	resp, err := c.Get("http://agent/metrics")
	must(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			must(t, err)
			return f
		}
	}
	return -1
}

// raiseNoFile raises the soft descriptor limit to at least n (bounded by
// the hard limit) for the test, and returns what it is.
func raiseNoFile(t *testing.T, n uint64) uint64 {
	var lim syscall.Rlimit
	must(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur >= n {
		return lim.Cur
	}
	old := lim
	lim.Cur = min(n, lim.Max)
	must(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	return lim.Cur
}

// TestAPIConnectionFlood: 4 000 idle connections from one address (issue
// 14 row 9: all were held, and at 1 024 descriptors the API stopped
// answering) cost the agent at most HTTPMaxConnsPerClient descriptors; the
// API answers another client meanwhile, and the idle ones it held are
// closed after the idle timeout.
func TestAPIConnectionFlood(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	a := f.startAgent(t, "host-a", dir, func(c *Config) { c.HTTPIdleTimeout = time.Second })
	unix := unixClient(dir)
	proctest.WaitFor(t, 30*time.Second, "agent API up", func() bool { return a.HTTPAddr() != "" })
	addr := a.HTTPAddr()

	flood := 4000
	if got := raiseNoFile(t, uint64(flood)+1024); got < uint64(flood)+1024 {
		flood = int(got) - 1024
		t.Logf("descriptor limit %d: flooding with %d connections", got, flood)
	}
	// The flood comes from 127.0.0.2 (loopback, nothing to set up), the
	// honest client from 127.0.0.1.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: testtime.Scaled(10 * time.Second)}
	conns := make([]net.Conn, 0, flood)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range flood {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	perClient := DefaultHTTPMaxConnsPerClient
	// Until the whole flood has been through accept, the agent never holds
	// more than the per-client cap of it (held ones close after the idle
	// timeout, making room for the next).
	proctest.WaitFor(t, 30*time.Second, "the flood accepted or refused", func() bool {
		if n := metricValue(t, unix, `visor_agent_api_connections{listener="http"}`); n > float64(perClient) {
			t.Fatalf("agent holds %v flood connections, want at most %d", n, perClient)
		}
		return metricValue(t, unix, `visor_agent_api_connections_accepted_total{listener="http"}`)+
			metricValue(t, unix, `visor_agent_api_connections_refused_total{listener="http"}`) >= float64(flood)
	})

	t.Logf("flood of %d: %v accepted (at most %d held at once), %v refused at accept", flood,
		metricValue(t, unix, `visor_agent_api_connections_accepted_total{listener="http"}`), perClient,
		metricValue(t, unix, `visor_agent_api_connections_refused_total{listener="http"}`))
	hc := &http.Client{Timeout: testtime.Scaled(10 * time.Second)}
	resp, err := hc.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz during the flood: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz during the flood: %d", resp.StatusCode)
	}
	hc.CloseIdleConnections()

	// Every flood connection ends: refused ones at once, held ones after
	// the idle timeout (they never send a request).
	deadline := time.Now().Add(testtime.Scaled(30 * time.Second))
	var one [1]byte
	for i, c := range conns {
		c.SetReadDeadline(deadline)
		if _, err := c.Read(one[:]); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("flood connection %d still open (read: %v)", i, err)
		}
	}
	proctest.WaitFor(t, 30*time.Second, "no API connection held", func() bool {
		return metricValue(t, unix, `visor_agent_api_connections{listener="http"}`) == 0
	})
}

// TestLimitListenerTotal: beyond the total cap a connection is closed at
// once, whoever it comes from, and a slot is free again once a held
// connection closes.
func TestLimitListenerTotal(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	l := newLimitListener(inner, 2, 0, hclog.NewNullLogger())
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		must(t, err)
		clients = append(clients, c)
		return c
	}
	dial()
	dial()
	held := []net.Conn{<-accepted, <-accepted}
	third := dial()
	third.SetReadDeadline(time.Now().Add(testtime.Scaled(10 * time.Second)))
	if _, err := third.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("third connection over a cap of 2 was not closed: %v", err)
	}
	proctest.WaitFor(t, 10*time.Second, "refusal counted", func() bool { _, _, r := l.conns(); return r == 1 })
	held[0].Close()
	dial()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("a connection after a held one closed was not accepted")
	}
	held[1].Close()
}

// TestLogStreamsCapped: concurrent log streams are capped per client and
// in total, with a 429 that names the limit; a stream whose client goes
// frees its slot.
func TestLogStreamsCapped(t *testing.T) {
	f := newFixture(t)
	must(t, f.app("talk", "tick 20ms"))
	dir := t.TempDir()
	a := f.startAgent(t, "host-a", dir, func(c *Config) { c.LogStreamsPerClient, c.LogStreams = 2, 3 })
	_, err := f.reg.Scale(f.ctx, "talk", "v1", "web", 1)
	must(t, err)
	var id string
	for k := range f.waitRunning(t, "talk", 1) {
		id = k
	}
	unix := unixClient(dir)
	type stream struct {
		cancel context.CancelFunc
		resp   *http.Response
	}
	open := func(c *http.Client, base string) (stream, int, string) {
		ctx, cancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(ctx, "GET", base+"/v1/instances/"+id+"/logs?follow=1&tail=1", nil)
		must(t, err)
		resp, err := c.Do(req)
		must(t, err)
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			cancel()
			return stream{}, resp.StatusCode, string(b)
		}
		// A line arrives: the stream is being served.
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatalf("first followed line: %v", err)
		}
		return stream{cancel, resp}, resp.StatusCode, ""
	}
	s1, _, _ := open(unix, "http://agent")
	s2, _, _ := open(unix, "http://agent")
	if _, code, body := open(unix, "http://agent"); code != http.StatusTooManyRequests || !strings.Contains(body, "limit 2 per client") {
		t.Fatalf("third stream of one client: %d %s", code, body)
	}
	hc := &http.Client{}
	s3, code, _ := open(hc, "http://"+a.HTTPAddr())
	if code != http.StatusOK {
		t.Fatalf("another client's first stream: %d", code)
	}
	if _, code, body := open(hc, "http://"+a.HTTPAddr()); code != http.StatusTooManyRequests || !strings.Contains(body, "limit 3") {
		t.Fatalf("stream over the total: %d %s", code, body)
	}
	// The client of s1 goes away: its slot comes back.
	s1.cancel()
	s1.resp.Body.Close()
	var s4 stream
	proctest.WaitFor(t, 30*time.Second, "a slot freed by a client that left", func() bool {
		s, code, _ := open(unix, "http://agent")
		s4 = s
		return code == http.StatusOK
	})
	for _, s := range []stream{s2, s3, s4} {
		s.cancel()
		s.resp.Body.Close()
	}
	hc.CloseIdleConnections()
}

// TestPortsOutOfDescriptors: with no descriptor left, Allocate says so
// instead of "no free port" (issue 14 row 9). Runs in a child process,
// whose descriptor limit it lowers.
func TestPortsOutOfDescriptors(t *testing.T) {
	if os.Getenv("VISOR_TEST_EMFILE_CHILD") == "1" {
		var lim syscall.Rlimit
		must(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
		lim.Cur = 64
		must(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
		var files []*os.File
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		for {
			f, err := os.Open(os.DevNull)
			if err != nil {
				if !errors.Is(err, syscall.EMFILE) {
					t.Fatal(err)
				}
				break
			}
			files = append(files, f)
		}
		p := newPortAllocator(39000, 39010)
		_, err := p.Allocate("a")
		if !errors.Is(err, ErrNoDescriptors) || !errors.Is(err, syscall.EMFILE) || errors.Is(err, ErrNoPort) {
			t.Fatalf("Allocate without descriptors: %v; want ErrNoDescriptors (EMFILE), not ErrNoPort", err)
		}
		return
	}
	t.Parallel()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestPortsOutOfDescriptors$", "-test.count=1")
	cmd.Env = append(os.Environ(), "VISOR_TEST_EMFILE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestAgentReadOnlyRoleStops: an agent whose etcd user may only read the
// prefix stops with registry.ErrPermission instead of retrying "registry
// unreachable" forever (issue 14 row 10).
func TestAgentReadOnlyRoleStops(t *testing.T) {
	c := etcdtest.New(t)
	prefix := etcdtest.Prefix(t)
	root := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(time.Minute))
	defer cancel()
	for _, step := range []func() error{
		func() error { return err2(root.UserAdd(ctx, "root", "rootpw")) },
		func() error { return err2(root.UserGrantRole(ctx, "root", "root")) },
		func() error { return err2(root.RoleAdd(ctx, "reader")) },
		func() error {
			return err2(root.RoleGrantPermission(ctx, "reader", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermRead)))
		},
		func() error { return err2(root.UserAdd(ctx, "ro", "ropw")) },
		func() error { return err2(root.UserGrantRole(ctx, "ro", "reader")) },
		func() error { return err2(root.AuthEnable(ctx)) },
	} {
		must(t, step())
	}
	// Authenticating (bcrypt) on a loaded machine can take longer than
	// the default dial timeout.
	reg, err := registry.Dial(ctx, registry.Config{Endpoints: c.Endpoints(), Prefix: prefix, Username: "ro", Password: "ropw",
		DialTimeout: testtime.Scaled(30 * time.Second)})
	must(t, err)
	defer reg.Close()
	dir := t.TempDir()
	a, err := New(Config{HostID: "ro-host", DataDir: dir, RunDir: filepath.Join(dir, "run"), HTTPAddr: "127.0.0.1:0", InsecureHTTP: true, Cgroups: "none"}, reg)
	must(t, err)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, registry.ErrPermission) {
			t.Fatalf("agent Run with a read-only role = %v; want registry.ErrPermission", err)
		}
		t.Logf("agent stopped: %v", err)
	case <-ctx.Done():
		t.Fatal("agent with a read-only role still running: it retries instead of stopping")
	}
}

func err2[T any](_ T, err error) error { return err }

func TestIsStreaming(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method, path, accept string
		want                 bool
	}{
		{"GET", "/v1/instances/web-web-1/logs", "", true},
		{"GET", "/v1/services/payments/watch", "", true},
		{"GET", "/v1/services/payments", "text/event-stream", true},
		{"GET", "/v1/status", "", false},
		{"POST", "/v1/instances/web-web-1/signal", "", false},
		{"POST", "/v1/services/payments/watch", "", false},
	} {
		r, err := http.NewRequest(tc.method, "http://agent"+tc.path, nil)
		must(t, err)
		if tc.accept != "" {
			r.Header.Set("Accept", tc.accept)
		}
		if got := isStreaming(r); got != tc.want {
			t.Errorf("isStreaming(%s %s, Accept %q) = %v, want %v", tc.method, tc.path, tc.accept, got, tc.want)
		}
	}
}

// TestFollowOutlivesWriteTimeout: the server's whole-response write
// timeout does not cut a followed log (it gets a deadline per write), and
// the same server still serves non-streaming routes. Not parallel: it
// lowers apiWriteTimeout for the agent it starts.
func TestFollowOutlivesWriteTimeout(t *testing.T) {
	old := apiWriteTimeout
	apiWriteTimeout = 300 * time.Millisecond
	t.Cleanup(func() { apiWriteTimeout = old })
	f := newFixture(t)
	must(t, f.app("talk", "tick 20ms"))
	a := f.startAgent(t, "host-a", t.TempDir(), nil)
	_, err := f.reg.Scale(f.ctx, "talk", "v1", "web", 1)
	must(t, err)
	var id string
	for k := range f.waitRunning(t, "talk", 1) {
		id = k
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+a.HTTPAddr()+"/v1/instances/"+id+"/logs?follow=1&tail=1", nil)
	must(t, err)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	// Read past several write timeouts; the stream must go on.
	past := time.Now().Add(4 * apiWriteTimeout)
	for time.Now().Before(past) {
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatalf("followed log cut after %s (write timeout %s): %v", time.Since(past.Add(-4*apiWriteTimeout)), apiWriteTimeout, err)
		}
	}
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatalf("followed log cut past the write timeout: %v", err)
	}
	cancel()
	resp2, err := http.Get("http://" + a.HTTPAddr() + "/v1/status")
	must(t, err)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusOK {
		t.Fatalf("/v1/status: %d", resp2.StatusCode)
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestClientKey: per-client limits count a token's principal wherever it
// connects from, a socket peer by uid, and an unauthenticated (insecure
// loopback) client by remote IP.
func TestClientKey(t *testing.T) {
	req := func(remote string, p *principal) *http.Request {
		r := httptest.NewRequest("GET", "/v1/status", nil)
		r.RemoteAddr = remote
		ctx := r.Context()
		if p != nil {
			ctx = context.WithValue(ctx, principalKey{}, *p)
		}
		return r.WithContext(ctx)
	}
	ci := &principal{name: "ci", scopes: bitRead}
	for _, tc := range []struct {
		name string
		r    *http.Request
		want string
	}{
		{"token from one address", req("198.51.100.7:4000", ci), "token:ci"},
		{"same token from another address", req("198.51.100.8:5000", ci), "token:ci"},
		{"anonymous by address", req("127.0.0.1:6000", &principal{name: anonymousPrincipal, scopes: bitOperator}), "127.0.0.1"},
		{"socket peer by uid", req("@", &principal{name: "uid:1000", scopes: bitRead}), "uid:1000"},
		{"nothing known", req("", nil), "local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := clientKey(tc.r); got != tc.want {
				t.Fatalf("clientKey = %q, want %q", got, tc.want)
			}
		})
	}
}
