package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
)

// callerHeader is how the tests below name a caller: a stand-in for the
// agent's authenticating middleware (tested in package agent).
const callerHeader = "X-Test-Caller"

// newAuthAPI is newAPI with hc and a middleware that turns callerHeader
// into WithCaller ("admin" is an Admin caller).
func newAuthAPI(t *testing.T, cfg RegistrarConfig, hc HandlerConfig) *api {
	t.Helper()
	f := newFixture(t)
	cfg.Logger = testLogger(t)
	reg := NewRegistrar(f.store, 0, cfg)
	runRegistrar(t, reg)
	hc.Store, hc.Registrar, hc.Logger = f.store, reg, testLogger(t)
	h := hc.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c := r.Header.Get(callerHeader); c != "" {
			r = r.WithContext(WithCaller(r.Context(), Caller{Name: c, Admin: c == "admin"}))
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return &api{fixture: f, reg: reg, srv: srv, cl: &Client{BaseURL: srv.URL, HTTP: srv.Client()}}
}

func TestHTTPRegistrationOwnership(t *testing.T) {
	a := newAuthAPI(t, RegistrarConfig{MaxPerClient: 2}, HandlerConfig{
		Reserved: func(_ context.Context, name string) error {
			if name == "web" || strings.HasPrefix(name, "web.") {
				return fmt.Errorf("%w: %q belongs to app web", ErrReserved, name)
			}
			return nil
		},
	})
	register := func(caller string) string {
		t.Helper()
		code, body := a.do(t, "POST", "/v1/services/pay", `{"port":80,"address":"192.0.2.1"}`, callerHeader, caller)
		if code != http.StatusCreated {
			t.Fatalf("%s registers = %d %s", caller, code, body)
		}
		return body[strings.Index(body, `"id":"`)+6:][:21]
	}
	id := register("alice")
	path := "/v1/services/pay/" + id
	for _, tc := range []struct {
		caller, method string
		want           int
	}{
		{"bob", "PUT", http.StatusForbidden},
		{"bob", "DELETE", http.StatusForbidden},
		{"", "DELETE", http.StatusForbidden}, // the remote address is not alice either
		{"alice", "PUT", http.StatusOK},
		{"admin", "PUT", http.StatusOK},
		{"alice", "DELETE", http.StatusNoContent},
		{"alice", "DELETE", http.StatusNotFound},
	} {
		code, body := a.do(t, tc.method, path, "", callerHeader, tc.caller)
		if code != tc.want {
			t.Fatalf("%s %s by %q = %d %s, want %d", tc.method, path, tc.caller, code, body, tc.want)
		}
		if code == http.StatusForbidden && !strings.Contains(body, "another client") {
			t.Fatalf("403 body %s does not say why", body)
		}
	}
	// An operator may free anyone's registration.
	id = register("alice")
	if code, body := a.do(t, "DELETE", "/v1/services/pay/"+id, "", callerHeader, "admin"); code != http.StatusNoContent {
		t.Fatalf("admin frees alice's registration = %d %s", code, body)
	}

	// Each caller has its own cap: alice's full cap does not stop bob.
	register("alice")
	register("alice")
	if code, body := a.do(t, "POST", "/v1/services/pay", `{"port":80,"address":"192.0.2.1"}`, callerHeader, "alice"); code != http.StatusTooManyRequests || !strings.Contains(body, `\"alice\" holds 2`) {
		t.Fatalf("alice over her cap = %d %s, want 429 naming her", code, body)
	}
	register("bob")

	// A name that belongs to an app is refused, whoever asks.
	for _, name := range []string{"web.api", "web"} {
		code, body := a.do(t, "POST", "/v1/services/"+name, `{"port":80,"address":"192.0.2.1"}`, callerHeader, "admin")
		if code != http.StatusForbidden || !strings.Contains(body, "belongs to app web") {
			t.Fatalf("register %s = %d %s, want 403", name, code, body)
		}
	}
	if n := a.keys(t); n != 3 {
		t.Fatalf("%d keys, want alice's 2 and bob's 1", n)
	}
	// The Go client sees 403 as ErrForbidden.
	a.cl.HTTP = &http.Client{Transport: headerTransport{callerHeader, "bob"}}
	if _, err := a.cl.Register(a.ctx, "web.api", RegisterRequest{Address: "192.0.2.1", Port: 80}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("client register of a reserved name = %v, want ErrForbidden", err)
	}
}

type headerTransport struct{ k, v string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.k, h.v)
	return http.DefaultTransport.RoundTrip(r)
}

// TestHTTPWatchCaps opens watch streams up to the per-caller and total
// caps: one more is refused with 429 (per caller) or 503 (total) and a
// body naming the cap; closing a stream frees its slot.
func TestHTTPWatchCaps(t *testing.T) {
	a := newAuthAPI(t, RegistrarConfig{}, HandlerConfig{MaxWatches: 3, MaxWatchesPerCaller: 2})
	open := func(caller string) (*http.Response, context.CancelFunc) {
		t.Helper()
		ctx, cancel := context.WithCancel(a.ctx)
		req, err := http.NewRequestWithContext(ctx, "GET", a.srv.URL+"/v1/services/pay/watch", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(callerHeader, caller)
		resp, err := a.srv.Client().Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); resp.Body.Close() })
		return resp, cancel
	}
	refused := func(caller string, want int, mention string) {
		t.Helper()
		resp, cancel := open(caller)
		defer cancel()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, readAll(resp))
		if resp.StatusCode != want || !strings.Contains(b.String(), mention) {
			t.Fatalf("watch by %s = %d %s, want %d naming %q", caller, resp.StatusCode, b.String(), want, mention)
		}
	}
	first, closeFirst := open("alice")
	second, _ := open("alice")
	for _, r := range []*http.Response{first, second} {
		if r.StatusCode != http.StatusOK {
			t.Fatalf("watch within the cap = %d", r.StatusCode)
		}
	}
	refused("alice", http.StatusTooManyRequests, "cap per client is 2")
	if r, _ := open("bob"); r.StatusCode != http.StatusOK {
		t.Fatalf("bob's watch = %d", r.StatusCode)
	}
	refused("carol", http.StatusServiceUnavailable, "cap of this agent is 3")

	closeFirst()
	first.Body.Close()
	proctest.WaitFor(t, 10*time.Second, "the closed stream's slot to be free", func() bool {
		r, cancel := open("alice")
		if r.StatusCode == http.StatusOK {
			return true
		}
		cancel()
		r.Body.Close()
		return false
	})
}

func readAll(r *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := r.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
