package discovery

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// api is a handler on a real HTTP server with a running Registrar.
type api struct {
	*fixture
	reg *Registrar
	srv *httptest.Server
	cl  *Client
}

func newAPI(t *testing.T, cfg RegistrarConfig) *api {
	t.Helper()
	f := newFixture(t)
	cfg.Logger = testLogger(t)
	reg := NewRegistrar(f.store, 0, cfg)
	runRegistrar(t, reg)
	srv := httptest.NewServer(NewHandler(f.store, reg, testLogger(t)))
	t.Cleanup(srv.Close)
	return &api{fixture: f, reg: reg, srv: srv, cl: &Client{BaseURL: srv.URL, HTTP: srv.Client()}}
}

func (a *api) do(t *testing.T, method, path, body string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(a.ctx, method, a.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHTTPRegisterLookupRenewFree(t *testing.T) {
	t.Parallel()
	a := newAPI(t, RegistrarConfig{Host: "h1"})
	for _, e := range []Endpoint{
		instanceEndpoint("web.api", "1.2.0", "web-api-1", "10.0.0.1", 8001, true),
		instanceEndpoint("web.api", "2.0.0", "web-api-2", "10.0.0.2", 8002, true),
		instanceEndpoint("web.api", "1.4.0", "web-api-3", "10.0.0.3", 8003, false),
	} {
		if err := a.store.Put(a.ctx, e, 0); err != nil {
			t.Fatal(err)
		}
	}
	reg, err := a.cl.Register(a.ctx, "web.api@1.5.0", RegisterRequest{Address: "192.0.2.7", Port: 9000, Meta: map[string]string{"zone": "a"}, TTL: TTL(9 * time.Second)})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	if reg.ID == "" || reg.Version != "1.5.0" || reg.Service != "web.api" || time.Duration(reg.TTL) != 9*time.Second || time.Duration(reg.RenewEvery) != 3*time.Second || reg.Meta["zone"] != "a" {
		t.Fatalf("registration = %+v", reg)
	}

	cases := []struct {
		query   string
		healthy bool
		want    []string
	}{
		{"", false, []string{"web-api-1", "web-api-2", "web-api-3", reg.ID}},
		{"^1.2", false, []string{"web-api-1", "web-api-3", reg.ID}},
		{"^1.2", true, []string{"web-api-1", reg.ID}},
		{"1.2.0", false, []string{"web-api-1"}},
		{">=2", false, []string{"web-api-2"}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s_healthy=%v", tc.query, tc.healthy), func(t *testing.T) {
			got, err := a.cl.Lookup(a.ctx, "web.api", tc.query, tc.healthy)
			if err != nil {
				t.Fatalf("lookup: %v", err)
			}
			g := ids(got)
			if fmt.Sprint(sortedCopy(g)) != fmt.Sprint(sortedCopy(tc.want)) {
				t.Fatalf("lookup %q = %v, want %v", tc.query, g, tc.want)
			}
		})
	}
	// name@range in the path works too, and external endpoints carry Expires.
	code, body := a.do(t, http.MethodGet, "/v1/services/"+url.PathEscape("web.api@~1.5")+"?healthy=1", "")
	var lr LookupResponse
	if code != http.StatusOK || json.Unmarshal([]byte(body), &lr) != nil || len(lr.Endpoints) != 1 || lr.Endpoints[0].Expires.IsZero() || lr.Revision == 0 {
		t.Fatalf("GET name@range = %d %s", code, body)
	}
	code, body = a.do(t, http.MethodGet, "/v1/services", "")
	if code != http.StatusOK || !strings.Contains(body, `"web.api"`) {
		t.Fatalf("GET /v1/services = %d %s", code, body)
	}

	renewed, err := a.cl.Renew(a.ctx, "web.api", reg.ID)
	if err != nil || !renewed.Expires.After(reg.Expires) && !renewed.Expires.Equal(reg.Expires) {
		t.Fatalf("renew = %+v, %v", renewed, err)
	}
	if err := a.cl.Free(a.ctx, "web.api", reg.ID); err != nil {
		t.Fatalf("free: %v", err)
	}
	if _, err := a.cl.Renew(a.ctx, "web.api", reg.ID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("renew after free = %v, want ErrUnknown", err)
	}
	if n := a.keys(t); n != 3 {
		t.Fatalf("%d keys after free, want the 3 instances", n)
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	for i := range c {
		for j := i + 1; j < len(c); j++ {
			if c[j] < c[i] {
				c[i], c[j] = c[j], c[i]
			}
		}
	}
	return c
}

func TestHTTPBadInput(t *testing.T) {
	t.Parallel()
	a := newAPI(t, RegistrarConfig{MaxPerClient: 2, MaxMetaBytes: 256})
	held, err := a.reg.Register(a.ctx, "someone", externalEndpoint("svc", "1", 80), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	bigMeta := fmt.Sprintf(`{"port":80,"address":"192.0.2.1","meta":{"k":%q}}`, strings.Repeat("v", 300))
	hugeBody := `{"port":80,"address":"192.0.2.1","meta":{"k":"` + strings.Repeat("v", 10000) + `"}}`
	cases := []struct {
		name, method, path, body string
		status                   int
		mention                  string
	}{
		{"upper name", "POST", "/v1/services/Web", `{"port":80}`, 400, `service name \"Web\"`},
		{"dotdot name", "POST", "/v1/services/..x", `{"port":80}`, 400, "service name"},
		{"escaped slash", "POST", "/v1/services/a%2Fb", `{"port":80}`, 400, "service name"},
		{"space name", "POST", "/v1/services/a%20b", `{"port":80}`, 400, "service name"},
		{"long name", "POST", "/v1/services/" + strings.Repeat("a", 300), `{"port":80}`, 400, "service name"},
		{"bad version", "POST", "/v1/services/svc", `{"port":80,"version":"1 .2"}`, 400, "version"},
		{"bad version in path", "POST", "/v1/services/svc@%5E1", `{"port":80}`, 400, "version"},
		{"two versions", "POST", "/v1/services/svc@1.0.0", `{"port":80,"version":"2.0.0"}`, 400, "version given twice"},
		{"port zero", "POST", "/v1/services/svc", `{"port":0,"address":"192.0.2.1"}`, 400, "port 0"},
		{"port high", "POST", "/v1/services/svc", `{"port":65536,"address":"192.0.2.1"}`, 400, "port 65536"},
		{"bad address", "POST", "/v1/services/svc", `{"port":80,"address":"a b"}`, 400, "address"},
		{"bad ttl", "POST", "/v1/services/svc", `{"port":80,"ttl":"soon"}`, 400, "ttl"},
		{"ttl too short", "POST", "/v1/services/svc", `{"port":80,"ttl":"10ms"}`, 400, "ttl"},
		{"negative ttl", "POST", "/v1/services/svc", `{"port":80,"ttl":-5}`, 400, "ttl"},
		{"unknown field", "POST", "/v1/services/svc", `{"port":80,"colour":"red"}`, 400, "colour"},
		{"not json", "POST", "/v1/services/svc", `port=80`, 400, "request body"},
		{"trailing data", "POST", "/v1/services/svc", `{"port":80} {}`, 400, "after the JSON"},
		{"oversize meta", "POST", "/v1/services/svc", bigMeta, 413, "metadata is 301 bytes"},
		{"oversize body", "POST", "/v1/services/svc", hugeBody, 413, "request body over"},
		{"bad meta key", "POST", "/v1/services/svc", `{"port":80,"meta":{"a b":"c"}}`, 400, "metadata key"},
		{"renew unknown", "PUT", "/v1/services/svc/xdeadbeef", "", 404, "unknown registration"},
		{"renew wrong service", "PUT", "/v1/services/other/" + held.ID, "", 404, "unknown registration"},
		{"free unknown", "DELETE", "/v1/services/svc/xdeadbeef", "", 404, "unknown registration"},
		{"lookup bad range", "GET", "/v1/services/svc?version=%3E%3Dfoo", "", 400, "version range"},
		{"lookup bad healthy", "GET", "/v1/services/svc?healthy=maybe", "", 400, "healthy"},
		{"watch bad since", "GET", "/v1/services/svc/watch?since=x", "", 400, "since"},
		{"no route", "GET", "/v1/services/svc/a/b", "", 404, "no route"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := a.do(t, tc.method, tc.path, tc.body, "Content-Type", "application/json")
			if code != tc.status {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, code, body, tc.status)
			}
			var eb errorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil || !strings.Contains(eb.Error, strings.ReplaceAll(tc.mention, `\"`, `"`)) {
				t.Fatalf("body %s does not name the problem %q", body, tc.mention)
			}
		})
	}
	if n := a.keys(t); n != 1 || a.reg.Len() != 1 {
		t.Fatalf("bad input stored something: %d keys, %d registrations", n, a.reg.Len())
	}

	// A flood from one client stops at the documented cap; nothing more is stored.
	t.Run("flood", func(t *testing.T) {
		var last int
		var lastBody string
		for i := range 5 {
			// A made-up Authorization header per request is no new client.
			code, body := a.do(t, "POST", "/v1/services/svc", `{"port":80,"address":"192.0.2.1"}`, "Authorization", fmt.Sprintf("Bearer made-up-%d", i))
			if i < 2 && code != http.StatusCreated {
				t.Fatalf("registration %d = %d %s", i, code, body)
			}
			last, lastBody = code, body
		}
		if last != http.StatusTooManyRequests || !strings.Contains(lastBody, "cap is 2") {
			t.Fatalf("over the cap = %d %s, want 429 naming the cap", last, lastBody)
		}
		if n := a.keys(t); n != 3 {
			t.Fatalf("%d keys after the flood, want 1 + the cap of 2", n)
		}
	})
}

// sseEvent is one parsed server-sent event.
type sseEvent struct {
	id, typ string
	data    WatchEvent
}

// readSSE reads n events from a watch stream opened with the given headers.
func readSSE(t *testing.T, a *api, path string, n int, header ...string) []sseEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(a.ctx, testtime.Scaled(10*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("watch = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	var out []sseEvent
	var cur sseEvent
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.typ != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			cur.typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.data); err != nil {
				t.Fatalf("event data: %v", err)
			}
		}
	}
	if len(out) < n {
		t.Fatalf("stream ended after %d of %d events: %v", len(out), n, sc.Err())
	}
	return out
}

func TestHTTPWatchResumesWithoutLoss(t *testing.T) {
	t.Parallel()
	a := newAPI(t, RegistrarConfig{})
	since := a.revision(t)
	lease, err := a.cli.Grant(a.ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	// Three endpoints on a lease, one without; revoking the lease frees
	// three at one revision.
	for i := range 3 {
		if err := a.store.Put(a.ctx, instanceEndpoint("web.api", "1.0.0", fmt.Sprintf("l%d", i), "10.0.0.1", 8000+i, true), lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.store.Put(a.ctx, instanceEndpoint("web.api", "2.0.0", "n0", "10.0.0.2", 8000, true), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cli.Revoke(a.ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.store.Delete(a.ctx, "web.api", "n0"); err != nil {
		t.Fatal(err)
	}
	all := readSSE(t, a, fmt.Sprintf("/v1/services/web.api/watch?since=%d", since), 8)
	var got []string
	for _, ev := range all {
		got = append(got, ev.typ+":"+ev.data.Endpoint.ID)
	}
	want := "[register:l0 register:l1 register:l2 register:n0 free:l0 free:l1 free:l2 free:n0]"
	if fmt.Sprint(got) != want {
		t.Fatalf("events = %v, want %s", got, want)
	}
	if all[4].data.Revision != all[6].data.Revision || all[5].id != EventID(all[4].data.Revision, 1) {
		t.Fatalf("lease frees not at one revision with indexed ids: %+v", all[4:7])
	}
	// The client dropped after the 6th event (mid-revision): resuming with
	// Last-Event-ID gives exactly the rest.
	rest := readSSE(t, a, "/v1/services/web.api/watch", 2, "Last-Event-ID", all[5].id)
	if rest[0].id != all[6].id || rest[1].id != all[7].id || rest[0].data.Endpoint.ID != "l2" || rest[1].data.Endpoint.ID != "n0" {
		t.Fatalf("resumed = %+v, want events %s and %s", rest, all[6].id, all[7].id)
	}
	// A version filter applies to the stream.
	v2 := readSSE(t, a, fmt.Sprintf("/v1/services/web.api/watch?since=%d&version=%%5E2", since), 2)
	if v2[0].data.Endpoint.ID != "n0" || v2[1].data.Endpoint.ID != "n0" || v2[1].typ != "free" {
		t.Fatalf("filtered watch = %+v", v2)
	}
}

func TestClientWatchAndKeep(t *testing.T) {
	t.Parallel()
	a := newAPI(t, RegistrarConfig{})
	resp, err := a.cl.LookupRevision(a.ctx, "payments", "", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(a.ctx)
	defer cancel()
	events := a.cl.Watch(ctx, "payments", resp.Revision)

	// Keep's registration and then another one, b, with the same TTL that
	// nobody renews: b expires after Keep's first deadline, and Keep's
	// renewals (every TTL/3) must carry its registration past that. A stall
	// of up to two thirds of the TTL cannot break this.
	ttl := testtime.Scaled(4 * time.Second)
	keepCtx, stopKeep := context.WithCancel(a.ctx)
	kept := make(chan error, 1)
	go func() {
		kept <- a.cl.Keep(keepCtx, "payments@3.1.0", RegisterRequest{Address: "192.0.2.9", Port: 7000, TTL: TTL(ttl)})
	}()
	keepDone := false
	defer func() {
		if !keepDone {
			stopKeep()
			<-kept
		}
	}()
	next := func(what string) Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(ttl + testtime.Scaled(10*time.Second)):
			t.Fatalf("no event within %v of the TTL: want %s", testtime.Scaled(10*time.Second), what)
			return Event{}
		}
	}
	first := next("Keep's registration")
	if first.Err != nil || first.Type != EventRegister || first.Endpoint.Version != "3.1.0" || first.Endpoint.Port != 7000 {
		t.Fatalf("first event = %+v", first)
	}
	b, err := a.cl.Register(a.ctx, "payments@3.1.0", RegisterRequest{Address: "192.0.2.9", Port: 7001, TTL: TTL(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	if ev := next("b's registration"); ev.Err != nil || ev.Type != EventRegister || ev.Endpoint.ID != b.ID {
		t.Fatalf("second event = %+v, want b's registration %s", ev, b.ID)
	}
	if ev := next("b freed by its TTL"); ev.Err != nil || ev.Type != EventFree || ev.Endpoint.ID != b.ID {
		t.Fatalf("event after b's TTL = %+v, want b (%s) freed and the kept %s still there", ev, b.ID, first.Endpoint.ID)
	}
	if eps, err := a.cl.Lookup(a.ctx, "payments", "^3", true); err != nil || len(eps) != 1 || eps[0].ID != first.Endpoint.ID {
		t.Fatalf("lookup while kept = %v, %v", eps, err)
	}
	stopKeep()
	keepDone = true
	if err := <-kept; err != nil {
		t.Fatalf("Keep = %v", err)
	}
	freed := next("Keep's registration freed")
	if freed.Type != EventFree || freed.Endpoint.ID != first.Endpoint.ID || freed.Revision <= first.Revision {
		t.Fatalf("after Keep stopped: %+v", freed)
	}
	cancel()
	for range events {
	}
	// A rejected watch ends with an error event.
	bad := a.cl.Watch(a.ctx, "Bad", 0)
	if ev := <-bad; !errors.Is(ev.Err, ErrInvalid) {
		t.Fatalf("watch of a bad name = %+v, want ErrInvalid", ev)
	}
	if _, ok := <-bad; ok {
		t.Fatal("watch channel open after a fatal error")
	}
}
