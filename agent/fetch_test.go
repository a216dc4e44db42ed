package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// defaultUnpackLimits are the unpack limits of a default Config.
func defaultUnpackLimits() unpackLimits {
	return artifactLimitsOf(Config{}.withDefaults()).unpack
}

// newTestCache returns an artifact cache in a fresh temporary directory
// with the default limits, changed by mod if not nil.
func newTestCache(t *testing.T, mod func(*Config)) *artifactCache {
	t.Helper()
	cfg := Config{}
	if mod != nil {
		mod(&cfg)
	}
	cfg = cfg.withDefaults()
	return newArtifactCache(t.TempDir(), artifactLimitsOf(cfg), nil)
}

// hungServer accepts connections and never answers; conns counts the
// connections it accepted, closed those that the client closed.
type hungServer struct {
	l      net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  int
	open   []net.Conn
	closed int
	change chan struct{} // closed and replaced on every count change
}

func newHungServer(t *testing.T) *hungServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &hungServer{l: l, change: make(chan struct{})}
	h.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			h.bump(func() { h.conns++; h.open = append(h.open, c) })
			h.wg.Go(func() {
				// Read (and ignore) the request until the client goes.
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				c.Close()
				h.bump(func() { h.closed++ })
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		h.mu.Lock()
		for _, c := range h.open {
			c.Close() // a client that never left must not hold the cleanup
		}
		h.mu.Unlock()
		h.wg.Wait()
	})
	return h
}

func (h *hungServer) bump(f func()) {
	h.mu.Lock()
	f()
	close(h.change)
	h.change = make(chan struct{})
	h.mu.Unlock()
}

// waitFor waits until cond (called under the lock) holds, failing the test
// after a scaled deadline.
func (h *hungServer) waitFor(t *testing.T, what string, cond func(conns, closed int) bool) {
	t.Helper()
	deadline := time.NewTimer(testtime.Scaled(30 * time.Second))
	defer deadline.Stop()
	for {
		h.mu.Lock()
		ok, ch := cond(h.conns, h.closed), h.change
		h.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("hung server: timed out waiting for %s", what)
		}
	}
}

func (h *hungServer) url() string { return "http://" + h.l.Addr().String() + "/app.tar.gz" }

// dirWithin calls c.Dir and fails the test unless it returns within a
// scaled deadline (the bound under test is much shorter).
func dirWithin(t *testing.T, ctx context.Context, c *artifactCache, url, sum string) error {
	t.Helper()
	type result struct{ err error }
	ch := make(chan result, 1)
	go func() {
		_, release, err := c.Dir(ctx, url, sum, -1)
		if release != nil {
			release()
		}
		ch <- result{err}
	}()
	select {
	case r := <-ch:
		return r.err
	case <-time.After(testtime.Scaled(30 * time.Second)):
		t.Fatalf("Dir(%s) did not return", url)
		return nil
	}
}

// flightWaiters is how many callers of c.Dir wait for a flight.
func flightWaiters(c *artifactCache) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, f := range c.flights {
		n += f.waiters
	}
	return n
}

// waitFlights fails the test unless every flight of c ends within a
// scaled deadline.
func waitFlights(t *testing.T, c *artifactCache) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		c.wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testtime.Scaled(30 * time.Second)):
		t.Fatal("artifact flights did not end")
	}
}

func TestArtifactFetchBounds(t *testing.T) {
	ctx := context.Background()
	sum := strings.Repeat("ab", 32)

	t.Run("a server that never answers hits the connect timeout", func(t *testing.T) {
		h := newHungServer(t)
		c := newTestCache(t, func(c *Config) { c.ArtifactConnectTimeout = 200 * time.Millisecond })
		err := dirWithin(t, ctx, c, h.url(), sum)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "timeout awaiting response headers") {
			t.Fatalf("err = %v, want a response header timeout", err)
		}
		waitFlights(t, c)
	})

	t.Run("the total timeout ends a fetch", func(t *testing.T) {
		h := newHungServer(t)
		c := newTestCache(t, func(c *Config) {
			c.ArtifactConnectTimeout = time.Hour
			c.ArtifactTimeout = 200 * time.Millisecond
		})
		err := dirWithin(t, ctx, c, h.url(), sum)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "artifact_timeout") {
			t.Fatalf("err = %v, want the total timeout named", err)
		}
		waitFlights(t, c)
		h.waitFor(t, "the connection closed", func(conns, closed int) bool { return conns == 1 && closed == 1 })
	})

	t.Run("the last waiter leaving cancels the fetch", func(t *testing.T) {
		h := newHungServer(t)
		c := newTestCache(t, func(c *Config) { c.ArtifactConnectTimeout, c.ArtifactTimeout = time.Hour, time.Hour })
		ctx1, cancel1 := context.WithCancel(ctx)
		ctx2, cancel2 := context.WithCancel(ctx)
		errs := make(chan error, 2)
		for _, ctx := range []context.Context{ctx1, ctx2} {
			go func() {
				_, _, err := c.Dir(ctx, h.url(), sum, -1)
				errs <- err
			}()
		}
		h.waitFor(t, "one connection (the waiters share the fetch)", func(conns, _ int) bool { return conns == 1 })
		// Both must have joined the flight before the first leaves: a
		// second waiter that came only after the first left would find
		// the flight cancelled and start one of its own (a second
		// connection), as it should.
		proctest.WaitFor(t, 30*time.Second, "both starts waiting for the fetch", func() bool { return flightWaiters(c) == 2 })
		cancel1()
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("first waiter: err = %v, want context.Canceled", err)
		}
		// The other still waits: the fetch goes on.
		h.mu.Lock()
		closed := h.closed
		h.mu.Unlock()
		if closed != 0 {
			t.Fatal("the fetch was cancelled while a start still waited for it")
		}
		cancel2()
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Fatalf("second waiter: err = %v, want context.Canceled", err)
		}
		waitFlights(t, c)
		h.waitFor(t, "the connection closed", func(conns, closed int) bool { return closed == 1 })
		h.mu.Lock()
		conns := h.conns
		h.mu.Unlock()
		if conns != 1 {
			t.Fatalf("%d connections, want 1", conns)
		}
	})

	t.Run("non-regular file sources are refused", func(t *testing.T) {
		dir := t.TempDir()
		fifo := filepath.Join(dir, "fifo")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "link")
		if err := os.Symlink(fifo, link); err != nil {
			t.Fatal(err)
		}
		c := newTestCache(t, nil)
		for path, want := range map[string]string{
			fifo:        "is a fifo",
			link:        "is a fifo",
			"/dev/zero": "is a character device",
			dir:         "is a directory",
		} {
			err := dirWithin(t, ctx, c, "file://"+path, sum)
			if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: err = %v, want %q", path, err, want)
			}
		}
	})

	t.Run("size limit", func(t *testing.T) {
		path, psum := makeArtifact(t, map[string]string{"big": strings.Repeat("x", 4096)})
		body, _ := os.ReadFile(path)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/chunked" {
				w.(http.Flusher).Flush() // no Content-Length
			}
			w.Write(body)
		}))
		defer srv.Close()
		c := newTestCache(t, func(c *Config) { c.ArtifactMaxBytes = int64(len(body) - 1) })
		for _, url := range []string{"file://" + path, srv.URL + "/a.tar.gz", srv.URL + "/chunked"} {
			err := dirWithin(t, ctx, c, url, psum)
			if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "artifact_max_bytes") {
				t.Errorf("%s: err = %v, want the size limit named", url, err)
			}
		}
	})

	t.Run("a local file's digest is not reported", func(t *testing.T) {
		secret := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(secret, []byte("hunter2\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("hunter2\n"))
		actual := hex.EncodeToString(d[:])
		c := newTestCache(t, nil)
		err := dirWithin(t, ctx, c, "file://"+secret, sum)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "sha256 mismatch") || strings.Contains(err.Error(), actual) {
			t.Fatalf("err = %v, want a mismatch that does not name the file's digest", err)
		}
		// Over http the server's content is reported: it is the server's.
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hunter2\n")) }))
		defer srv.Close()
		err = dirWithin(t, ctx, c, srv.URL+"/a.tar.gz", sum)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), actual) {
			t.Fatalf("http: err = %v, want the digest of what was served", err)
		}
	})
}

func TestArtifactRedirects(t *testing.T) {
	ctx := context.Background()
	path, sum := makeArtifact(t, map[string]string{"Procfile": "web: ./run\n"})
	body, _ := os.ReadFile(path)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer target.Close()
	tlsTarget := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer tlsTarget.Close()
	var origin *httptest.Server
	origin = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/same":
			http.Redirect(w, r, origin.URL+"/blob", http.StatusFound)
		case "/other":
			http.Redirect(w, r, target.URL+"/blob", http.StatusFound)
		case "/https":
			http.Redirect(w, r, tlsTarget.URL+"/blob", http.StatusFound)
		case "/blob":
			w.Write(body)
		default:
			http.NotFound(w, r)
		}
	}))
	defer origin.Close()
	targetHost := strings.TrimPrefix(target.URL, "http://")
	tlsHost := strings.TrimPrefix(tlsTarget.URL, "https://")

	cases := []struct {
		name, path string
		allow      []string
		want       string // "" = success
	}{
		{"same host", "/same", nil, ""},
		{"other host refused", "/other", nil, "not the host of the artifact URL"},
		{"other host allowed", "/other", []string{targetHost}, ""},
		{"scheme change refused even to an allowed host", "/https", []string{tlsHost}, "scheme must stay http"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCache(t, func(c *Config) { c.ArtifactRedirectHosts = tc.allow })
			err := dirWithin(t, ctx, c, origin.URL+tc.path, sum)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("err = %v, want success", err)
			case tc.want != "" && (!errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// rawTarGz builds a tar.gz from headers (with bodies of hdr.Size bytes of
// 'x' for the types that carry data) and returns its bytes.
func rawTarGz(t testing.TB, hdrs []*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write(bytes.Repeat([]byte("x"), int(h.Size))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUnpackLimits(t *testing.T) {
	lim := unpackLimits{maxBytes: 64 << 10, maxEntries: 20}
	many := func(n int) []*tar.Header {
		var hs []*tar.Header
		for i := range n {
			hs = append(hs, &tar.Header{Name: "d" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		}
		return hs
	}
	cases := []struct {
		name string
		hdrs []*tar.Header
		want string // "" = success
	}{
		{"within limits", []*tar.Header{{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1000}}, ""},
		{"a file over the byte limit", []*tar.Header{{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 65 << 10}}, "artifact_max_unpacked_bytes"},
		{"files adding up over the byte limit", []*tar.Header{
			{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644, Size: 40 << 10},
			{Name: "b", Typeflag: tar.TypeReg, Mode: 0o644, Size: 40 << 10}}, "artifact_max_unpacked_bytes"},
		{"skipped entries count", []*tar.Header{
			{Name: "x", Typeflag: 'Z', Mode: 0o644, Size: 40 << 10},
			{Name: "y", Typeflag: 'Z', Mode: 0o644, Size: 40 << 10}}, "artifact_max_unpacked_bytes"},
		{"entries within the count", many(20), ""},
		{"too many entries", many(21), "artifact_max_entries"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			blob := filepath.Join(t.TempDir(), "a.tar.gz")
			if err := os.WriteFile(blob, rawTarGz(t, tc.hdrs), 0o600); err != nil {
				t.Fatal(err)
			}
			rel := filepath.Join(t.TempDir(), "rel")
			err := unpack(context.Background(), blob, rel, lim, -1)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("err = %v, want success", err)
			case tc.want != "" && (!errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want %q", err, tc.want)
			case tc.want != "":
				if _, serr := os.Stat(rel); serr == nil {
					t.Fatal("a refused artifact left a release")
				}
			}
		})
	}

	t.Run("the stream counts, not only the sizes", func(t *testing.T) {
		// 100 empty files announce 0 bytes but take 100 headers (51 KiB).
		var hs []*tar.Header
		for i := range 100 {
			hs = append(hs, &tar.Header{Name: "f" + strings.Repeat("y", i), Typeflag: tar.TypeReg, Mode: 0o644})
		}
		blob := filepath.Join(t.TempDir(), "a.tar.gz")
		if err := os.WriteFile(blob, rawTarGz(t, hs), 0o600); err != nil {
			t.Fatal(err)
		}
		err := unpack(context.Background(), blob, filepath.Join(t.TempDir(), "rel"), unpackLimits{maxBytes: 20 << 10, maxEntries: 1000}, -1)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "artifact_max_unpacked_bytes") {
			t.Fatalf("err = %v, want the byte limit named", err)
		}
	})
}

// TestArtifactFetchStall: a server that sends part of the artifact and
// then nothing fails the fetch after ArtifactStallTimeout, naming the
// stall, although the fetch's total timeout is an hour away.
func TestArtifactFetchStall(t *testing.T) {
	sent := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1048576")
		w.Write(make([]byte, 4096))
		w.(http.Flusher).Flush()
		close(sent)
		<-r.Context().Done() // stalls until the client goes
	}))
	defer srv.Close()
	c := newTestCache(t, func(c *Config) {
		c.ArtifactConnectTimeout, c.ArtifactTimeout = time.Hour, time.Hour
		c.ArtifactStallTimeout = 300 * time.Millisecond
	})
	err := dirWithin(t, context.Background(), c, srv.URL+"/app.tar.gz", strings.Repeat("ab", 32))
	<-sent
	if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "stalled: no bytes received for 300ms (artifact_stall_timeout)") {
		t.Fatalf("err = %v, want the stall named", err)
	}
	waitFlights(t, c)
}

// TestArtifactFetchLinkLocal: artifact URLs and redirects to link-local
// addresses (cloud metadata) are refused before anything is sent, unless
// ArtifactAllowLinkLocal; the dialer refuses names that resolve there.
func TestArtifactFetchLinkLocal(t *testing.T) {
	ctx := context.Background()
	sum := strings.Repeat("ab", 32)
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254:1/latest/meta-data/", http.StatusFound)
	}))
	defer redirect.Close()
	c := newTestCache(t, func(c *Config) { c.ArtifactRedirectHosts = []string{"169.254.169.254:1"} })
	for url, addr := range map[string]string{
		"http://169.254.169.254:1/app.tar.gz": "169.254.169.254",
		"http://[fe80::1%25lo]:1/app.tar.gz":  "fe80::1%lo",
		"http://[::ffff:169.254.1.1]:1/a":     "::ffff:169.254.1.1",
		redirect.URL + "/app.tar.gz":          "169.254.169.254",
	} {
		err := dirWithin(t, ctx, c, url, sum)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "refusing link-local address "+addr) ||
			!strings.Contains(err.Error(), "artifact_allow_link_local") {
			t.Errorf("%s: err = %v, want the link-local address refused", url, err)
		}
	}

	// The dialer's check, for names that resolve to such an address.
	for addr, refused := range map[string]bool{
		"169.254.169.254:80": true, "[fe80::1%lo]:80": true, "[fe80::abcd]:443": true, "[::ffff:169.254.0.1]:80": true,
		"127.0.0.1:80": false, "198.51.100.7:443": false, "[::1]:80": false, "[fd00::1]:80": false,
	} {
		err := refuseLinkLocal("tcp", addr, nil)
		var ll *linkLocalError
		if got := errors.As(err, &ll); got != refused {
			t.Errorf("refuseLinkLocal(%s) = %v, want refused %v", addr, err, refused)
		}
	}

	allowed := newTestCache(t, func(c *Config) { c.ArtifactAllowLinkLocal = true })
	for _, u := range []string{"http://169.254.169.254/x", "http://[fe80::1]/x"} {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := allowed.checkLinkLocal(pu); err != nil {
			t.Errorf("%s with artifact_allow_link_local: %v", u, err)
		}
		if err := c.checkLinkLocal(pu); err == nil {
			t.Errorf("%s refused by default: got nil", u)
		}
	}
}
