package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"
	"time"
)

func TestCheckTypeValid(t *testing.T) {
	t.Parallel()
	for _, ct := range CheckTypes() {
		if !ct.Valid() {
			t.Errorf("CheckType(%q).Valid() = false for a member of CheckTypes", ct)
		}
		if _, err := newProber(HealthCheck{Type: ct}, runAs{}); err != nil && errors.Is(err, errUnknownCheckType) {
			t.Errorf("CheckType %q has no prober: %v", ct, err)
		}
	}
	for _, ct := range []CheckType{"", "ping", "HTTP", "exec "} {
		if ct.Valid() {
			t.Errorf("CheckType(%q).Valid() = true", ct)
		}
		if _, err := newProber(HealthCheck{Type: ct}, runAs{}); !errors.Is(err, errUnknownCheckType) {
			t.Errorf("newProber(type %q) = %v, want errUnknownCheckType", ct, err)
		}
	}
}

// TestNewProberRejects: each type checks the fields it needs.
func TestNewProberRejects(t *testing.T) {
	t.Parallel()
	for name, h := range map[string]HealthCheck{
		"exec without command":   {Type: CheckExec},
		"tcp without port":       {Type: CheckTCP, Address: "127.0.0.1"},
		"tcp empty":              {Type: CheckTCP},
		"http without scheme":    {Type: CheckHTTP, URL: "127.0.0.1:80/health"},
		"http with other scheme": {Type: CheckHTTP, URL: "ftp://127.0.0.1/health"},
		"http without host":      {Type: CheckHTTP, URL: "http:///health"},
		"http unparsable":        {Type: CheckHTTP, URL: "http://[::1"},
	} {
		if p, err := newProber(h, runAs{}); err == nil {
			t.Errorf("%s: newProber() = %T, want an error", name, p)
		}
	}
}

// TestProbers runs one probe of each type against real things: sh, a TCP
// listener, an HTTP server.
func TestProbers(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/fail", http.StatusFound)
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dir := t.TempDir()
	env := runAs{env: []string{"PATH=" + DefaultPath, "VISOR_CHECK=yes"}, dir: dir}
	sh := func(script string) []string { return []string{"/bin/sh", "-c", script} }

	for _, tc := range []struct {
		name    string
		h       HealthCheck
		timeout time.Duration
		pass    bool
		is      error // the failure wraps it
		code    int   // the exit code of a failed exec check
	}{
		{"exec exit 0", HealthCheck{Type: CheckExec, Command: sh("exit 0")}, 0, true, nil, 0},
		{"exec exit 3", HealthCheck{Type: CheckExec, Command: sh("exit 3")}, 0, false, nil, 3},
		{"exec env", HealthCheck{Type: CheckExec, Command: sh(`test "$VISOR_CHECK" = yes`)}, 0, true, nil, 0},
		{"exec dir", HealthCheck{Type: CheckExec, Command: sh(`test "$(pwd -P)" = "$(cd ` + dir + ` && pwd -P)"`)}, 0, true, nil, 0},
		{"exec timeout", HealthCheck{Type: CheckExec, Command: sh("sleep 300")}, 100 * time.Millisecond, false, nil, 0},
		{"tcp accepted", HealthCheck{Type: CheckTCP, Address: ln.Addr().String()}, 0, true, nil, 0},
		{"tcp refused", HealthCheck{Type: CheckTCP, Address: freeAddr(t)}, 0, false, nil, 0},
		{"http 200", HealthCheck{Type: CheckHTTP, URL: srv.URL + "/ok"}, 0, true, nil, 0},
		{"http 302 not followed", HealthCheck{Type: CheckHTTP, URL: srv.URL + "/moved"}, 0, true, nil, 0},
		{"http 500", HealthCheck{Type: CheckHTTP, URL: srv.URL + "/fail"}, 0, false, errHealthStatus, 0},
		{"http 404", HealthCheck{Type: CheckHTTP, URL: srv.URL + "/missing"}, 0, false, errHealthStatus, 0},
		{"http timeout", HealthCheck{Type: CheckHTTP, URL: srv.URL + "/hang"}, 100 * time.Millisecond, false, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := newProber(tc.h, env)
			if err != nil {
				t.Fatal(err)
			}
			timeout := tc.timeout
			if timeout == 0 {
				timeout = time.Minute
			}
			err = probeWithin(context.Background(), p, timeout)
			if (err == nil) != tc.pass {
				t.Fatalf("probe() = %v, want pass %v", err, tc.pass)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("probe() = %v, want it to wrap %v", err, tc.is)
			}
			var exit *exec.ExitError
			if tc.code != 0 && (!errors.As(err, &exit) || exit.ExitCode() != tc.code) {
				t.Fatalf("probe() = %v, want exit code %d", err, tc.code)
			}
		})
	}
}

// TestHealthCheckTypeJSON: the typed field keeps the persisted form, a
// plain string (state journals written before it was typed still load).
func TestHealthCheckTypeJSON(t *testing.T) {
	t.Parallel()
	rec := []byte(`{"type":"tcp","address":"127.0.0.1:1"}`)
	var h HealthCheck
	if err := json.Unmarshal(rec, &h); err != nil {
		t.Fatal(err)
	}
	if h.Type != CheckTCP {
		t.Fatalf("type %q, want %q", h.Type, CheckTCP)
	}
}
