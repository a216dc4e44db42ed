package agent

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/visorhq/visor/ui"
)

// TestDashboardAuth checks that the dashboard under /ui/ keeps the HTTP
// API's token rules for a browser: without a token it sends to the login
// page, a wrong cookie token back to it, a good one (cookie or bearer
// header) gets the page, the login page and assets are open, and an
// action needs the operator scope.
func TestDashboardAuth(t *testing.T) {
	f := newFixture(t)
	ops, reader := "ops-0123456789abcdef", "reader-0123456789abcdef"
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) {
		c.InsecureHTTP = false
		c.Tokens = []Token{
			{Name: "ops", Scopes: []Scope{ScopeOperator}, SHA256: HashToken(ops)},
			{Name: "reader", Scopes: []Scope{ScopeRead}, SHA256: HashToken(reader)},
		}
	})
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	f.waitRunning(t, "demo", 1) // the agent serves, and host-a is registered
	base := "http://" + a.HTTPAddr()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	call := func(method, path, cookie, bearer string, form url.Values) (int, string, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(f.ctx, method, base+path, strings.NewReader(form.Encode()))
		must(t, err)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: ui.CookieName, Value: url.QueryEscape(cookie)})
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := client.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header.Get("Location")
	}
	for _, tc := range []struct {
		name, method, path, cookie, bearer string
		form                               url.Values
		code                               int
		loc, body                          string
	}{
		{"no token", "GET", "/ui/", "", "", nil, 303, "/ui/login?error=missing", ""},
		{"wrong cookie", "GET", "/ui/", "nope", "", nil, 303, "/ui/login?error=token", ""},
		{"login open", "GET", "/ui/login", "", "", nil, 200, "", "Agent API token"},
		{"asset open", "GET", "/ui/assets/ui.css", "", "", nil, 200, "", "Visor dashboard"},
		{"cookie", "GET", "/ui/", reader, "", nil, 200, "", `data-host="host-a"`},
		{"bearer", "GET", "/ui/hosts/host-a", "", reader, nil, 200, "", "Host <span"},
		{"reader may not act", "POST", "/ui/hosts/host-a/drain", reader, "", url.Values{"confirm": {"yes"}}, 403, "", "needs scope"},
		{"reader may not read logs", "GET", "/ui/instances/x-1/logs", reader, "", nil, 403, "", "needs scope"},
		{"operator acts", "POST", "/ui/hosts/host-a/drain", ops, "", url.Values{"confirm": {"yes"}}, 409, "", "Could not drain host host-a"},
		{"login sets cookie", "POST", "/ui/login", "", "", url.Values{"token": {ops}}, 303, "/ui/", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, loc := call(tc.method, tc.path, tc.cookie, tc.bearer, tc.form)
			if code != tc.code || loc != tc.loc || !strings.Contains(body, tc.body) {
				t.Fatalf("%s %s: %d %q, want %d %q with %q in\n%s", tc.method, tc.path, code, loc, tc.code, tc.loc, tc.body, body)
			}
		})
	}
}

func TestUIScope(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		want         scopeSet
	}{
		{"GET", "/ui/", bitRead},
		{"GET", "/ui/live", bitRead},
		{"GET", "/ui/apps/demo", bitRead},
		{"GET", "/ui/instances/x-1", bitRead},
		{"GET", "/ui/instances/x-1/logs", bitLogs},
		{"GET", "/ui/login", 0},
		{"POST", "/ui/login", 0},
		{"GET", "/ui/assets/ui.js", 0},
		{"POST", "/ui/apps/demo/scale", bitOperator},
		{"POST", "/ui/instances/x-1/logs", bitOperator},
		{"POST", "/ui/hosts/h/drain", bitOperator},
	} {
		r, _ := http.NewRequest(tc.method, "http://agent"+tc.path, nil)
		if got, _ := scopeFor(r); got != tc.want {
			t.Errorf("%s %s needs %v, want %v", tc.method, tc.path, got, tc.want)
		}
	}
}
