package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/apierror"
	"github.com/visorhq/visor/supervisor"
)

// fakeAPISupervisor is a supervisor of fixed instances for the local API's
// handlers; Signal answers with signalErr and records what it was asked.
type fakeAPISupervisor struct {
	insts     []supervisor.Status
	logDir    string
	signalErr error
	signaled  []string
}

func (f *fakeAPISupervisor) List() []supervisor.Status {
	return append([]supervisor.Status(nil), f.insts...)
}

func (f *fakeAPISupervisor) Status(id string) (supervisor.Status, bool) {
	for _, st := range f.insts {
		if st.ID == id {
			return st, true
		}
	}
	return supervisor.Status{}, false
}

func (f *fakeAPISupervisor) Has(id string) bool { _, ok := f.Status(id); return ok }

func (f *fakeAPISupervisor) Signal(id, sig string) error {
	f.signaled = append(f.signaled, id+":"+sig)
	return f.signalErr
}

func (f *fakeAPISupervisor) LogPath(id, stream string) string {
	return filepath.Join(f.logDir, id+"."+stream+".log")
}

func (f *fakeAPISupervisor) CgroupMode() string { return "none" }

// newTestAPI serves a localAPI over sup on a mux as the agent routes it;
// connected says whether it has a session (lease 0xabc, leader h9).
func newTestAPI(t *testing.T, sup *fakeAPISupervisor, connected bool) *httptest.Server {
	t.Helper()
	api := &localAPI{host: "h1", addr: "10.0.0.1", version: "v-test", started: time.Now().Add(-time.Minute),
		sup: sup, log: hclog.NewNullLogger(),
		lease:  func() (clientv3.LeaseID, bool) { return 0xabc, connected },
		leader: func(context.Context) string { return "h9" },
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", api.handleStatus)
	mux.HandleFunc("GET /v1/instances", api.handleInstances)
	mux.HandleFunc("GET /v1/instances/{id}", api.handleInstance)
	mux.HandleFunc("GET /v1/instances/{id}/logs", api.logsHandler(newStreamLimiter(4, 2)))
	mux.HandleFunc("POST /v1/instances/{id}/signal", api.handleSignal)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func apiGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestLocalAPIStatus: the status names the host and counts instances by
// state; the lease and leader appear only while connected. No etcd.
func TestLocalAPIStatus(t *testing.T) {
	sup := &fakeAPISupervisor{insts: []supervisor.Status{
		{ID: "a", State: supervisor.StateRunning}, {ID: "b", State: supervisor.StateRunning}, {ID: "c", State: supervisor.StateExited},
	}}
	for _, connected := range []bool{false, true} {
		code, body := apiGet(t, newTestAPI(t, sup, connected).URL+"/v1/status")
		var st Status
		if code != http.StatusOK || json.Unmarshal([]byte(body), &st) != nil {
			t.Fatalf("connected=%v: %d %s", connected, code, body)
		}
		if st.Host != "h1" || st.Addr != "10.0.0.1" || st.Version != "v-test" || st.CgroupMode != "none" ||
			st.Instances["running"] != 2 || st.Instances["exited"] != 1 {
			t.Errorf("connected=%v: status %+v", connected, st)
		}
		want := Status{Connected: connected}
		if connected {
			want.Lease, want.Leader = "abc", "h9"
		}
		if st.Connected != want.Connected || st.Lease != want.Lease || st.Leader != want.Leader {
			t.Errorf("connected=%v: connected %v lease %q leader %q, want %v %q %q",
				connected, st.Connected, st.Lease, st.Leader, want.Connected, want.Lease, want.Leader)
		}
	}
}

// TestLocalAPIInstances: the list and one instance as the supervisor has
// them; an unknown instance is a 404 naming it, in the API's error body.
func TestLocalAPIInstances(t *testing.T) {
	sup := &fakeAPISupervisor{insts: []supervisor.Status{{ID: "a", State: supervisor.StateRunning, PID: 0}}}
	srv := newTestAPI(t, sup, true)
	code, body := apiGet(t, srv.URL+"/v1/instances")
	var list []supervisor.Status
	if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || len(list) != 1 || list[0].ID != "a" {
		t.Errorf("GET /v1/instances: %d %s", code, body)
	}
	code, body = apiGet(t, srv.URL+"/v1/instances/a")
	var one supervisor.Status
	if code != http.StatusOK || json.Unmarshal([]byte(body), &one) != nil || one.ID != "a" {
		t.Errorf("GET /v1/instances/a: %d %s", code, body)
	}
	code, body = apiGet(t, srv.URL+"/v1/instances/zz")
	var eb apierror.Body
	if code != http.StatusNotFound || json.Unmarshal([]byte(body), &eb) != nil || !strings.Contains(eb.Error, `no instance "zz" on this host`) {
		t.Errorf("GET /v1/instances/zz: %d %s", code, body)
	}
	// An empty host lists [], not null.
	if code, body := apiGet(t, newTestAPI(t, &fakeAPISupervisor{}, true).URL+"/v1/instances"); code != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Errorf("empty GET /v1/instances: %d %q", code, body)
	}
}

// TestLocalAPISignal: each supervisor outcome maps to its status and
// error code; a bad body never reaches the supervisor.
func TestLocalAPISignal(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		err        error
		code       int
		errCode    string // "" for success
		reached    bool
	}{
		{"ok", `{"signal":"HUP"}`, nil, http.StatusOK, "", true},
		{"unknown instance", `{"signal":"HUP"}`, fmt.Errorf("x: %w", supervisor.ErrNotFound), http.StatusNotFound, "not_found", true},
		{"bad signal", `{"signal":"NOPE"}`, fmt.Errorf("x: %w", supervisor.ErrInvalidSpec), http.StatusBadRequest, "invalid_signal", true},
		{"not running", `{"signal":"HUP"}`, errors.New("instance is exited"), http.StatusConflict, "", true},
		{"empty signal", `{"signal":""}`, nil, http.StatusBadRequest, "invalid_body", false},
		{"unknown field", `{"signal":"HUP","x":1}`, nil, http.StatusBadRequest, "invalid_body", false},
		{"trailing data", `{"signal":"HUP"} {}`, nil, http.StatusBadRequest, "invalid_body", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sup := &fakeAPISupervisor{insts: []supervisor.Status{{ID: "a"}}, signalErr: tc.err}
			resp, err := http.Post(newTestAPI(t, sup, true).URL+"/v1/instances/a/signal", "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body := string(b)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.code, body)
			}
			if tc.errCode != "" {
				var eb apierror.Body
				if json.Unmarshal([]byte(body), &eb) != nil || eb.Code != tc.errCode {
					t.Errorf("error body %s, want code %q", body, tc.errCode)
				}
			}
			if reached := len(sup.signaled) > 0; reached != tc.reached {
				t.Errorf("supervisor asked: %v (%v), want %v", reached, sup.signaled, tc.reached)
			}
		})
	}
}

// TestLocalAPILogs: the last tail lines of the instance's log file; bad
// stream and tail values and unknown instances are refused by name.
func TestLocalAPILogs(t *testing.T) {
	sup := &fakeAPISupervisor{insts: []supervisor.Status{{ID: "a"}}, logDir: t.TempDir()}
	if err := os.WriteFile(sup.LogPath("a", "stdout"), []byte("one\ntwo\nthree\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := newTestAPI(t, sup, false)
	if code, body := apiGet(t, srv.URL+"/v1/instances/a/logs?tail=2"); code != http.StatusOK || body != "two\nthree\n" {
		t.Errorf("tail=2: %d %q, want two and three", code, body)
	}
	for q, want := range map[string]string{
		"a/logs?stream=bogus": "stream must be",
		"a/logs?tail=-1":      "tail must be an integer",
		"a/logs?tail=100001":  "tail must be an integer",
		"zz/logs":             `no instance \"zz\" on this host`,
	} {
		code, body := apiGet(t, srv.URL+"/v1/instances/"+q)
		if code < 400 || !strings.Contains(body, want) {
			t.Errorf("%s: %d %s, want an error with %q", q, code, body, want)
		}
	}
}
