package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/apierror"
	"github.com/visorhq/visor/internal/proctest"
)

// TestAPIErrorShape walks the error paths of every endpoint of the agent
// API (issue 17, item 7: three error formats were in use) and checks that
// each answers with one JSON body, {"error": ..., "code": ...}, and
// nothing else: auth refusals, unknown routes and methods, missing
// instances, bad queries, unknown JSON fields in a signal, unknown and
// out-of-range signals, discovery's own errors. It also sends a signal by
// a name the old list lacked (SIGXCPU... the seed's 30) and by number.
func TestAPIErrorShape(t *testing.T) {
	f := newFixture(t)
	secret := "ops-0123456789abcdef"
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) {
		c.InsecureHTTP, c.StopOnExit = false, true
		c.Tokens = []Token{
			{Name: "ops", Scopes: []Scope{ScopeOperator}, SHA256: HashToken(secret)},
			{Name: "reader", Scopes: []Scope{ScopeRead}, SHA256: HashToken("reader-0123456789abcdef")},
		}
	})
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	var id string
	var pid int
	for k, in := range f.waitRunning(t, "demo", 1) {
		id, pid = k, in.PID
	}
	base := "http://" + a.HTTPAddr()
	inst := "/v1/instances/" + id
	call := func(method, path, token, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(f.ctx, method, base+path, strings.NewReader(body))
		must(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		must(t, err)
		return resp.StatusCode, b
	}
	for _, tc := range []struct {
		name, method, path, token, body string
		status                          int
		code, says                      string
	}{
		{"no token", "GET", "/v1/instances", "", "", 401, "unauthorized", "Authorization: Bearer"},
		{"unknown token", "GET", "/v1/status", "nope-0123456789abcdef", "", 401, "unauthorized", "unknown bearer token"},
		{"missing scope", "POST", inst + "/signal", "reader-0123456789abcdef", `{"signal":"HUP"}`, 403, "forbidden", "needs scope"},
		{"unknown route", "GET", "/v1/nowhere", secret, "", 404, "not_found", "404 page not found"},
		{"wrong method", "DELETE", "/v1/status", secret, "", 405, "method_not_allowed", "Method Not Allowed"},
		{"no such instance", "GET", "/v1/instances/nope", secret, "", 404, "not_found", `no instance "nope"`},
		{"logs of no instance", "GET", "/v1/instances/nope/logs", secret, "", 404, "not_found", `no instance "nope"`},
		{"bad stream", "GET", inst + "/logs?stream=both", secret, "", 400, "bad_request", "stream must be"},
		{"bad tail", "GET", inst + "/logs?tail=-1", secret, "", 400, "bad_request", "tail must be"},
		{"signal not JSON", "POST", inst + "/signal", secret, `HUP`, 400, "invalid_body", "body must be JSON"},
		{"signal unknown field", "POST", inst + "/signal", secret, `{"signal":"HUP","force":true}`, 400, "invalid_body", `unknown field "force"`},
		{"signal trailing data", "POST", inst + "/signal", secret, `{"signal":"HUP"} {"signal":"KILL"}`, 400, "invalid_body", "data after"},
		{"signal empty", "POST", inst + "/signal", secret, `{}`, 400, "invalid_body", "signal is empty"},
		{"signal unknown", "POST", inst + "/signal", secret, `{"signal":"BOGUS"}`, 400, "invalid_signal", `unknown signal "BOGUS"`},
		{"signal number out of range", "POST", inst + "/signal", secret, `{"signal":"65"}`, 400, "invalid_signal", "signal number 65"},
		{"signal no such instance", "POST", "/v1/instances/nope/signal", secret, `{"signal":"HUP"}`, 404, "not_found", "nope"},
		{"service bad name", "GET", "/v1/services/Bad_Name", secret, "", 400, "bad_request", "service name"},
		{"service unknown field", "POST", "/v1/services/payments", secret, `{"address":"192.0.2.1","port":1,"x":1}`, 400, "bad_request", "unknown field"},
		{"service unknown route", "GET", "/v1/services/a/b/c", secret, "", 404, "not_found", "no route"},
		{"service free unknown", "DELETE", "/v1/services/payments/nope", secret, "", 404, "not_found", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, b := call(tc.method, tc.path, tc.token, tc.body)
			var body apierror.Body
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&body); err != nil {
				t.Fatalf("body %q is not the error shape: %v", b, err)
			}
			if status != tc.status || body.Code != tc.code || !strings.Contains(body.Error, tc.says) || body.Error == "" {
				t.Fatalf("%s %s = %d %+v; want %d, code %q, error naming %q", tc.method, tc.path, status, body, tc.status, tc.code, tc.says)
			}
		})
	}

	// Names and numbers the old list refused reach the process: WINCH was
	// known, XCPU and URG were not; 18 is SIGCONT on Linux. SIGSTOP by
	// number stops the process (its state in /proc says so).
	for _, sig := range []string{"SIGURG", "urg", "WINCH", "18"} {
		if status, b := call("POST", inst+"/signal", secret, `{"signal":"`+sig+`"}`); status != 200 {
			t.Fatalf("signal %s: %d %s", sig, status, b)
		}
	}
	if status, b := call("POST", inst+"/signal", secret, `{"signal":"19"}`); status != 200 {
		t.Fatalf("signal 19: %d %s", status, b)
	}
	waitProcState(t, pid, true)
	if status, b := call("POST", inst+"/signal", secret, `{"signal":"CONT"}`); status != 200 {
		t.Fatalf("signal CONT: %d %s", status, b)
	}
	waitProcState(t, pid, false)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("instance gone after harmless signals: %v", err)
	}
}

// waitProcState waits until pid is stopped (state T in /proc/PID/stat),
// or, with stopped false, until it is not.
func waitProcState(t *testing.T, pid int, stopped bool) {
	t.Helper()
	proctest.WaitFor(t, 30*time.Second, "process "+strconv.Itoa(pid)+" stopped="+strconv.FormatBool(stopped), func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		i := bytes.LastIndexByte(b, ')')
		return i > 0 && len(b) > i+2 && (b[i+2] == 'T') == stopped
	})
}
