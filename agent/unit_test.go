package agent

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

func TestConfigValidate(t *testing.T) {
	good := Config{HostID: "h1", DataDir: "/var/lib/visor", RunDir: "/run/visor", DisableHTTP: true}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	cases := []struct {
		name  string
		mod   func(*Config)
		field string
	}{
		{"bad host", func(c *Config) { c.HostID = "Bad/Host" }, "host"},
		{"ttl too small", func(c *Config) { c.TTL = time.Second }, "ttl"},
		{"relative data dir", func(c *Config) { c.DataDir = "data" }, "data_dir"},
		{"missing run dir", func(c *Config) { c.RunDir = "" }, "run_dir"},
		{"run dir too long for its socket", func(c *Config) { c.RunDir = "/tmp/" + strings.Repeat("d", 92) }, "above the 107 a Unix socket path may have"},
		{"inverted port range", func(c *Config) { c.PortMin, c.PortMax = 3000, 2000 }, "port_range"},
		{"port range beyond 65535", func(c *Config) { c.PortMin, c.PortMax = 2000, 70000 }, "port_range"},
		{"unknown cgroups", func(c *Config) { c.Cgroups = "v3" }, "cgroups"},
		{"negative capacity", func(c *Config) { c.Capacity = -2 }, "capacity"},
		{"public http without token", func(c *Config) { c.DisableHTTP, c.HTTPAddr = false, "0.0.0.0:7777" }, "token"},
		{"loopback http without token", func(c *Config) { c.DisableHTTP = false }, "needs tokens"},
		{"insecure off loopback", func(c *Config) { c.DisableHTTP, c.HTTPAddr, c.InsecureHTTP = false, "0.0.0.0:7777", true }, "insecure_http"},
		{"token without scopes", func(c *Config) { c.Tokens = []Token{{Name: "ci", SHA256: HashToken("x")}} }, "no scopes"},
		{"token bad scope", func(c *Config) { c.Tokens = []Token{{Name: "ci", Scopes: []Scope{"admin"}, SHA256: HashToken("x")}} }, `scope "admin"`},
		{"token bad hash", func(c *Config) { c.Tokens = []Token{{Name: "ci", Scopes: []Scope{ScopeRead}, SHA256: "abc"}} }, "64 hex"},
		{"token bad name", func(c *Config) {
			c.Tokens = []Token{{Name: "uid:0", Scopes: []Scope{ScopeRead}, SHA256: HashToken("x")}}
		}, "token name"},
		{"token twice", func(c *Config) {
			c.Tokens = []Token{{Name: "ci", Scopes: []Scope{ScopeRead}, SHA256: HashToken("x")}, {Name: "ci", Scopes: []Scope{ScopeRead}, SHA256: HashToken("y")}}
		}, "twice"},
		{"bad socket scope", func(c *Config) { c.SocketGroupScopes = []Scope{"all"} }, "socket_group_scopes"},
		{"bad http addr", func(c *Config) { c.DisableHTTP, c.HTTPAddr = false, "nonsense" }, "http_addr"},
		{"tls cert without key", func(c *Config) { c.TLSCertFile = "/x.pem" }, "tls_cert"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tc.field)
			}
		})
	}
}

// makeArtifact writes a tar.gz with the given files (see writeTarGz) and
// returns its path and sha256.
func makeArtifact(t *testing.T, files map[string]string) (string, string) {
	t.Helper()
	var entries []tarEntry
	for name, body := range files {
		entries = append(entries, tarEntry{name: name, typ: tar.TypeReg, body: body})
	}
	p := writeTarGz(t, entries)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return p, hex.EncodeToString(sum[:])
}

func TestArtifactCache(t *testing.T) {
	ctx := context.Background()
	path, sum := makeArtifact(t, map[string]string{
		"Procfile": "# processes\nweb: ./run web\nworker:  ./run worker --fast\n",
		"run":      "#!/bin/sh\nexec sleep 100\n",
	})

	t.Run("file url unpacks once and finds procfile commands", func(t *testing.T) {
		c := newTestCache(t, nil)
		dir, _, err := c.Dir(ctx, "file://"+path, sum, -1)
		if err != nil {
			t.Fatalf("Dir: %v", err)
		}
		if st, err := os.Stat(filepath.Join(dir, "run")); err != nil || st.Mode()&0o100 == 0 {
			t.Fatalf("run not unpacked executable: %v", err)
		}
		again, _, err := c.Dir(ctx, "file://"+path, sum, -1)
		if err != nil || again != dir {
			t.Fatalf("second Dir = %q, %v; want cached %q", again, err, dir)
		}
		cmd, err := procfileCommand(dir, "worker")
		if err != nil || cmd != "./run worker --fast" {
			t.Fatalf("procfileCommand(worker) = %q, %v", cmd, err)
		}
		if _, err := procfileCommand(dir, "cron"); !errors.Is(err, ErrArtifact) {
			t.Fatalf("missing proc: err = %v, want ErrArtifact", err)
		}
	})

	t.Run("http url", func(t *testing.T) {
		body, _ := os.ReadFile(path)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/app.tar.gz" {
				http.NotFound(w, r)
				return
			}
			w.Write(body)
		}))
		defer srv.Close()
		c := newTestCache(t, nil)
		if _, _, err := c.Dir(ctx, srv.URL+"/app.tar.gz", sum, -1); err != nil {
			t.Fatalf("Dir over http: %v", err)
		}
		_, _, err := c.Dir(ctx, srv.URL+"/missing.tar.gz", strings.Repeat("a", 64), -1)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "404") {
			t.Fatalf("missing artifact: err = %v, want ErrArtifact naming 404", err)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		c := newTestCache(t, nil)
		for name, tc := range map[string]struct{ url, sum, want string }{
			"sha mismatch":       {"file://" + path, strings.Repeat("0", 64), "sha256 mismatch"},
			"short sha":          {"file://" + path, "abc", "64 hex"},
			"missing file":       {"file:///nonexistent/app.tar.gz", sum, "no such file"},
			"unsupported scheme": {"ftp://example.invalid/a.tgz", sum, "scheme"},
		} {
			_, _, err := c.Dir(ctx, tc.url, tc.sum, -1)
			if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: err = %v, want ErrArtifact containing %q", name, err, tc.want)
			}
		}
		if _, err := os.Stat(filepath.Join(c.dir, "releases")); err == nil {
			entries, _ := os.ReadDir(filepath.Join(c.dir, "releases"))
			if len(entries) != 0 {
				t.Errorf("failed fetches left releases behind: %v", entries)
			}
		}
	})

	t.Run("entries escaping the release are refused", func(t *testing.T) {
		evil, evilSum := makeArtifact(t, map[string]string{"../../escape": "x"})
		c := newTestCache(t, nil)
		_, _, err := c.Dir(ctx, "file://"+evil, evilSum, -1)
		if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), "escapes") {
			t.Fatalf("err = %v, want an escape error", err)
		}
	})
}

func TestPortAllocator(t *testing.T) {
	// Allocate probes each port with a bind: the range lies below the
	// kernel's ephemeral ports (32768 up), which other tests' connections
	// take at random.
	p := newPortAllocator(31000, 31002)
	p.Reserve(31000, "adopted")
	a, err := p.Allocate("a")
	if err != nil || a == 31000 {
		t.Fatalf("Allocate = %d, %v; want a port other than the reserved one", a, err)
	}
	b, err := p.Allocate("b")
	if err != nil || b == a {
		t.Fatalf("Allocate = %d, %v; want a second distinct port", b, err)
	}
	if _, err := p.Allocate("c"); !errors.Is(err, ErrNoPort) {
		t.Fatalf("exhausted range: err = %v, want ErrNoPort", err)
	}
	p.Free(a, "a")
	if c, err := p.Allocate("c"); err != nil || c != a {
		t.Fatalf("after Free: Allocate = %d, %v; want %d", c, err, a)
	}
}

func TestUnknownClaimOutcome(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{fmt.Errorf("claim: %w", registry.ErrClaimed), false},
		{fmt.Errorf("claim: %w", registry.ErrTicketChanged), false},
		{fmt.Errorf("claim: %w", registry.ErrLeaseLost), false},
		{fmt.Errorf("claim: %w", registry.ErrInvalid), false},
		{fmt.Errorf("claim: %w", context.DeadlineExceeded), true},
		{errors.New("rpc error: code = Unavailable desc = connection reset"), true},
	} {
		if got := unknownOutcome(c.err); got != c.want {
			t.Errorf("unknownOutcome(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
