package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/supervisor"
)

// authClientEnv, set to "1", makes the test binary an API client (see
// authClientMain): the tests run it as an unprivileged user.
const authClientEnv = "VISOR_AUTH_CLIENT"

// apiCall is one request of an auth client.
type apiCall struct {
	Method, Path, Body, Token string
}

// apiResult is its outcome: an HTTP status, or the error of the call.
type apiResult struct {
	Code int    `json:"code"`
	Body string `json:"body"`
	Err  string `json:"err,omitempty"`
}

// authClientMain, in a process started by runAs, makes the calls in
// $VISOR_AUTH_CALLS against $VISOR_AUTH_TARGET ("unix:PATH" or an HTTP
// base URL) and prints their results as JSON; then exits.
func authClientMain() {
	if os.Getenv(authClientEnv) != "1" {
		return
	}
	var calls []apiCall
	if err := json.Unmarshal([]byte(os.Getenv("VISOR_AUTH_CALLS")), &calls); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	target := os.Getenv("VISOR_AUTH_TARGET")
	client, base := &http.Client{Timeout: 30 * time.Second}, target
	if sock, ok := strings.CutPrefix(target, "unix:"); ok {
		base = "http://agent"
		client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}
	}
	var out []apiResult
	for _, c := range calls {
		req, err := http.NewRequest(c.Method, base+c.Path, strings.NewReader(c.Body))
		if err != nil {
			out = append(out, apiResult{Err: err.Error()})
			continue
		}
		if c.Token != "" {
			req.Header.Set("Authorization", "Bearer "+c.Token)
		}
		resp, err := client.Do(req)
		if err != nil {
			out = append(out, apiResult{Err: err.Error()})
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		out = append(out, apiResult{Code: resp.StatusCode, Body: string(b)})
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

// unprivileged is a copy of the test binary that any user may run (the
// build directory is root's alone), in a directory removed at cleanup.
func unprivileged(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other users")
	}
	dir, err := os.MkdirTemp("", "visor-auth-bin-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	self, err := os.Executable()
	must(t, err)
	b, err := os.ReadFile(self)
	must(t, err)
	bin := filepath.Join(dir, "client")
	must(t, os.WriteFile(bin, b, 0o755))
	return bin
}

// runAs runs the calls as uid:gid against target and returns the results.
func runAs(t *testing.T, bin string, uid, gid uint32, target string, calls ...apiCall) []apiResult {
	t.Helper()
	js, err := json.Marshal(calls)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(60*time.Second))
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = "/"
	cmd.Env = []string{authClientEnv + "=1", "VISOR_AUTH_CALLS=" + string(js), "VISOR_AUTH_TARGET=" + target}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client as uid %d: %v\n%s", uid, err, stderr.String())
	}
	var res []apiResult
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(calls) {
		t.Fatalf("client output %q: %v", out, err)
	}
	return res
}

// Unprivileged users of the tests (no such account needs to exist).
const (
	nobodyUID, nobodyGID = 65534, 65534 // the socket group's member in the token tests
	otherUID, otherGID   = 65533, 65533 // in no group of the agent's
)

// authDirs makes a data dir and a run dir with mode runMode and group
// runGID outside the test's private temp dir (which other users cannot
// enter).
func authDirs(t *testing.T, runMode os.FileMode, runGID int) (data, run string) {
	t.Helper()
	base, err := os.MkdirTemp("", "visor-auth-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	must(t, os.Chmod(base, 0o755))
	data, run = filepath.Join(base, "data"), filepath.Join(base, "run")
	must(t, os.Mkdir(data, 0o750))
	must(t, os.Mkdir(run, runMode))
	must(t, os.Chmod(run, runMode))
	must(t, os.Chown(run, 0, runGID))
	return data, run
}

func running(t *testing.T, a *testAgent, id string) bool {
	t.Helper()
	st, ok := a.sup.Status(id)
	return ok && st.State == supervisor.StateRunning
}

// TestUnprivilegedLocalUserShippedDefault runs the agent with the packaged
// configuration's API settings (packaging/agent.json: no HTTP listener;
// the socket directory as tmpfiles makes it, 0755 root) and has a local
// user (uid 65534) try what issue 14 showed it could: read another app's
// logs, SIGSTOP an instance, register or free a service, flood
// registrations with made-up Authorization headers. Every call fails.
func TestUnprivilegedLocalUserShippedDefault(t *testing.T) {
	bin := unprivileged(t)
	var shipped map[string]any
	b, err := os.ReadFile(filepath.Join("..", "packaging", "agent.json"))
	must(t, err)
	must(t, json.Unmarshal(b, &shipped))
	if shipped["http_addr"] != "off" {
		t.Fatalf("packaging/agent.json http_addr = %v; this test assumes the shipped default serves no HTTP", shipped["http_addr"])
	}
	f := newFixture(t)
	data, run := authDirs(t, 0o755, 0)
	a := f.startAgent(t, "host-a", data, func(c *Config) {
		c.RunDir, c.DisableHTTP, c.InsecureHTTP, c.StopOnExit = run, true, false, true
	})
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	var id string
	for k := range f.waitRunning(t, "demo", 1) {
		id = k
	}
	if a.HTTPAddr() != "" {
		t.Fatalf("shipped default listens on HTTP %s", a.HTTPAddr())
	}
	// root registers a service the attacker will try to free.
	held, err := a.registrar.Register(f.ctx, "uid:0", externalEndpointForTest("payments", 7000), time.Minute)
	must(t, err)

	calls := []apiCall{
		{Method: "GET", Path: "/v1/instances/" + id + "/logs"},
		{Method: "POST", Path: "/v1/instances/" + id + "/signal", Body: `{"signal":"STOP"}`},
		{Method: "POST", Path: "/v1/services/payments", Body: `{"address":"192.0.2.66","port":443}`},
		{Method: "DELETE", Path: "/v1/services/payments/" + held.ID},
		{Method: "GET", Path: "/v1/status"},
	}
	for i := range 5 {
		calls = append(calls, apiCall{Method: "POST", Path: "/v1/services/payments", Body: `{"address":"192.0.2.66","port":443}`, Token: fmt.Sprintf("made-up-%d", i)})
	}
	sock := filepath.Join(run, SocketName)
	for i, r := range runAs(t, bin, otherUID, otherGID, "unix:"+sock, calls...) {
		if r.Err == "" || !strings.Contains(r.Err, "permission denied") {
			t.Errorf("%s %s as uid %d = %d %s %q, want permission denied on the socket", calls[i].Method, calls[i].Path, otherUID, r.Code, r.Body, r.Err)
		}
	}
	fi, err := os.Stat(sock)
	must(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Uid != 0 || st.Gid != 0 {
		t.Errorf("socket is %04o %d:%d, want 0660 root:root", fi.Mode().Perm(), st.Uid, st.Gid)
	}
	if !running(t, a, id) {
		t.Errorf("instance %s is not running after the attempts", id)
	}
	if n := a.registrar.Len(); n != 1 {
		t.Errorf("%d registrations after the attempts, want root's 1", n)
	}
}

func externalEndpointForTest(service string, port int) discovery.Endpoint {
	return discovery.Endpoint{Service: service, Addr: "127.0.0.1", Port: port}
}

// TestUnprivilegedLocalUserScopes gives the HTTP API tokens and the socket
// a group, and has unprivileged local users call it: without a token or
// with a made-up one nothing (and no registration cap is touched); with a
// read token status but not logs, signals or registrations; register
// tokens own their registrations and have a cap each; an operator token
// may do everything. On the socket, a member of its group reads, a
// non-member cannot connect.
func TestUnprivilegedLocalUserScopes(t *testing.T) {
	bin := unprivileged(t)
	f := newFixture(t)
	data, run := authDirs(t, 0o750, nobodyGID)
	secret := func(name string) string { return name + "-0123456789abcdef" }
	tok := func(name string, scopes ...Scope) Token {
		return Token{Name: name, Scopes: scopes, SHA256: HashToken(secret(name))}
	}
	a := f.startAgent(t, "host-a", data, func(c *Config) {
		c.RunDir, c.InsecureHTTP, c.StopOnExit = run, false, true
		c.SocketGroup = fmt.Sprint(nobodyGID)
		c.Tokens = []Token{
			tok("reader", ScopeRead), tok("ops", ScopeOperator),
			tok("svc-a", ScopeRegister), tok("svc-b", ScopeRegister, ScopeRead), tok("logger", ScopeLogs),
		}
	})
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	var id string
	for k := range f.waitRunning(t, "demo", 1) {
		id = k
	}
	base := "http://" + a.HTTPAddr()
	logs := "/v1/instances/" + id + "/logs"
	signal := "/v1/instances/" + id + "/signal"
	reg := func(token string) apiCall {
		return apiCall{Method: "POST", Path: "/v1/services/payments", Body: `{"address":"192.0.2.10","port":443}`, Token: token}
	}
	type want struct {
		call apiCall
		code int
	}
	check := func(uid, gid uint32, target string, ws ...want) []apiResult {
		t.Helper()
		calls := make([]apiCall, len(ws))
		for i, w := range ws {
			calls[i] = w.call
		}
		res := runAs(t, bin, uid, gid, target, calls...)
		for i, w := range ws {
			if res[i].Code != w.code {
				t.Errorf("uid %d: %s %s (token %q) = %d %s %s, want %d", uid, w.call.Method, w.call.Path, w.call.Token, res[i].Code, res[i].Body, res[i].Err, w.code)
			}
		}
		return res
	}

	t.Run("no or made-up token", func(t *testing.T) {
		ws := []want{
			{apiCall{Method: "GET", Path: "/v1/status"}, 401},
			{apiCall{Method: "GET", Path: logs}, 401},
			{apiCall{Method: "POST", Path: signal, Body: `{"signal":"STOP"}`}, 401},
			{apiCall{Method: "GET", Path: "/healthz"}, 200},
		}
		for i := range 120 { // more than the registration cap of 100
			ws = append(ws, want{reg(fmt.Sprintf("made-up-%d", i)), 401})
		}
		check(otherUID, otherGID, base, ws...)
		if n := a.registrar.Len(); n != 0 {
			t.Fatalf("%d registrations stored by unauthenticated requests", n)
		}
	})
	t.Run("read token", func(t *testing.T) {
		check(otherUID, otherGID, base,
			want{apiCall{Method: "GET", Path: "/v1/status", Token: secret("reader")}, 200},
			want{apiCall{Method: "GET", Path: "/v1/instances", Token: secret("reader")}, 200},
			want{apiCall{Method: "GET", Path: "/v1/services/payments", Token: secret("reader")}, 200},
			want{apiCall{Method: "GET", Path: "/metrics", Token: secret("reader")}, 200},
			want{apiCall{Method: "GET", Path: logs, Token: secret("reader")}, 403},
			want{apiCall{Method: "POST", Path: signal, Body: `{"signal":"STOP"}`, Token: secret("reader")}, 403},
			want{reg(secret("reader")), 403},
			want{apiCall{Method: "GET", Path: logs, Token: secret("logger")}, 200},
			want{apiCall{Method: "GET", Path: "/v1/status", Token: secret("logger")}, 403},
		)
		if !running(t, a, id) {
			t.Fatal("instance not running after a refused SIGSTOP")
		}
	})
	t.Run("registration ownership and caps", func(t *testing.T) {
		res := check(otherUID, otherGID, base, want{reg(secret("svc-a")), 201})
		var r struct{ ID string }
		must(t, json.Unmarshal([]byte(res[0].Body), &r))
		p := "/v1/services/payments/" + r.ID
		check(otherUID, otherGID, base,
			want{apiCall{Method: "PUT", Path: p, Token: secret("svc-b")}, 403},
			want{apiCall{Method: "DELETE", Path: p, Token: secret("svc-b")}, 403},
			want{apiCall{Method: "DELETE", Path: p, Token: secret("reader")}, 403},
			want{apiCall{Method: "DELETE", Path: p, Token: "made-up"}, 401},
			want{apiCall{Method: "GET", Path: "/v1/status", Token: secret("svc-a")}, 403}, // register only
			want{apiCall{Method: "PUT", Path: p, Token: secret("svc-a")}, 200},
			want{apiCall{Method: "PUT", Path: p, Token: secret("ops")}, 200},
			want{apiCall{Method: "DELETE", Path: p, Token: secret("svc-a")}, 204},
			// A Visor app's name is not for outsiders, operators included.
			want{apiCall{Method: "POST", Path: "/v1/services/demo.web", Body: `{"address":"192.0.2.66","port":80}`, Token: secret("ops")}, 403},
		)
		// svc-a fills its cap (100); svc-b's own cap is untouched.
		ws := make([]want, 0, 102)
		for range 100 {
			ws = append(ws, want{reg(secret("svc-a")), 201})
		}
		ws = append(ws, want{reg(secret("svc-a")), 429}, want{reg(secret("svc-b")), 201})
		check(otherUID, otherGID, base, ws...)
		if n := a.registrar.Len(); n != 101 {
			t.Fatalf("%d registrations, want svc-a's 100 and svc-b's 1", n)
		}
	})
	t.Run("operator token", func(t *testing.T) {
		check(otherUID, otherGID, base,
			want{apiCall{Method: "GET", Path: logs, Token: secret("ops")}, 200},
			want{apiCall{Method: "POST", Path: signal, Body: `{"signal":"STOP"}`, Token: secret("ops")}, 200},
			want{apiCall{Method: "POST", Path: signal, Body: `{"signal":"CONT"}`, Token: secret("ops")}, 200},
		)
	})
	t.Run("unix socket", func(t *testing.T) {
		sock := "unix:" + filepath.Join(run, SocketName)
		check(nobodyUID, nobodyGID, sock,
			want{apiCall{Method: "GET", Path: "/v1/status"}, 200},
			want{apiCall{Method: "GET", Path: logs}, 403},
			want{apiCall{Method: "POST", Path: signal, Body: `{"signal":"STOP"}`}, 403},
			want{reg(""), 403},
		)
		res := runAs(t, bin, otherUID, otherGID, sock, apiCall{Method: "GET", Path: "/v1/status"})
		if !strings.Contains(res[0].Err, "permission denied") {
			t.Errorf("non-member on the socket = %d %s %q, want permission denied", res[0].Code, res[0].Body, res[0].Err)
		}
		if !running(t, a, id) {
			t.Fatal("instance not running after a refused SIGSTOP over the socket")
		}
	})
}

// TestTokenFileChecks: a token file others may read is refused, plain
// secrets are hashed on load, and a loaded token authenticates.
func TestTokenFileChecks(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tokens.json")
	must(t, os.WriteFile(p, []byte(`{"tokens":[{"name":"ci","scopes":["read"],"token":"ci-secret-0123456789"},{"name":"ops","scopes":["operator"],"sha256":"`+HashToken("ops-secret-0123456789")+`"}]}`), 0o644))
	if _, err := LoadTokenFile(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable token file: %v, want refused", err)
	}
	must(t, os.Chmod(p, 0o600))
	toks, err := LoadTokenFile(p)
	must(t, err)
	if len(toks) != 2 || toks[0].Secret != "" || toks[0].SHA256 != HashToken("ci-secret-0123456789") {
		t.Fatalf("tokens = %+v", toks)
	}
	au, err := newAuthenticator(Config{Tokens: toks})
	must(t, err)
	if p, ok := au.token("ops-secret-0123456789"); !ok || p.name != "ops" || !p.scopes.has(bitLogs) {
		t.Fatalf("ops token = %+v %v", p, ok)
	}
	if p, ok := au.token("ci-secret-0123456789"); !ok || p.scopes.has(bitLogs) || !p.scopes.has(bitRead) {
		t.Fatalf("ci token = %+v %v", p, ok)
	}
	if _, ok := au.token("ci-secret-012345678"); ok {
		t.Fatal("a wrong secret authenticated")
	}
	must(t, os.WriteFile(p, []byte(`{"tokens":[{"name":"ci","scopes":["read"],"token":"short"}]}`), 0o600))
	if _, err := LoadTokenFile(p); err == nil || !strings.Contains(err.Error(), "shorter than 16") {
		t.Fatalf("short secret: %v", err)
	}
}

// TestScopeForRoutes pins the scope of every route of routes().
func TestScopeForRoutes(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		want         scopeSet
	}{
		{"GET", "/healthz", 0},
		{"GET", "/v1/status", bitRead},
		{"GET", "/v1/instances", bitRead},
		{"GET", "/v1/instances/x1", bitRead},
		{"GET", "/metrics", bitRead},
		{"GET", "/v1/services", bitRead},
		{"GET", "/v1/services/a.b", bitRead},
		{"GET", "/v1/services/a.b/watch", bitRead},
		{"GET", "/v1/instances/x1/logs", bitLogs},
		{"POST", "/v1/instances/x1/signal", bitOperator},
		{"POST", "/v1/services/a", bitRegister},
		{"PUT", "/v1/services/a/x1", bitRegister},
		{"DELETE", "/v1/services/a/x1", bitRegister},
		{"GET", "/debug/pprof/cmdline", bitOperator},
		{"GET", "/v1/instances/x1/other", bitOperator},
		{"POST", "/v1/status", bitOperator},
		{"GET", "/v1/apps/demo/deployment", bitRead},
		{"GET", "/v1/apps/demo/deployments", bitRead},
		{"HEAD", "/v1/apps/demo/deployments", bitRead},
		{"POST", "/v1/apps/demo/deployment/pause", bitOperator},
		{"POST", "/v1/apps/demo/deployment/promote", bitOperator},
		{"POST", "/v1/apps/demo/rollback", bitOperator},
		{"GET", "/v1/apps/demo/deployment/pause", bitOperator},
		{"POST", "/v1/apps/demo/deployments", bitOperator},
		{"GET", "/v1/apps/demo/other", bitOperator},
	} {
		r, _ := http.NewRequest(tc.method, "http://agent"+tc.path, nil)
		if got, _ := scopeFor(r); got != tc.want {
			t.Errorf("%s %s needs %v, want %v", tc.method, tc.path, got, tc.want)
		}
	}
}
