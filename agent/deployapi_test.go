package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/apierror"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// apiDo makes one request of the agent's HTTP API and returns the status
// and body.
func apiDo(t *testing.T, method, url, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	must(t, err)
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	return resp.StatusCode, b
}

// wantAPIError checks that b is the API's one error body with code.
func wantAPIError(t *testing.T, what string, status, wantStatus int, b []byte, code string) {
	t.Helper()
	var e apierror.Body
	if status != wantStatus || json.Unmarshal(b, &e) != nil || e.Code != code || e.Error == "" {
		t.Errorf("%s: %d %s, want %d with code %q", what, status, b, wantStatus, code)
	}
}

// TestDeployAPI: the deployment routes read and act on the registry's
// deployments (status, history, pause/resume/promote/fail, rollback),
// answer bad input and unknown apps with the API's one error body, and
// the elected agent's /metrics counts deployments by state and running
// instances per revision.
func TestDeployAPI(t *testing.T) {
	f := newFixture(t)
	a := f.startAgent(t, "host-a", t.TempDir(), nil)
	_, err := f.reg.RegisterRevision(f.ctx, registry.Revision{App: "demo", Name: "v2", Dir: os.TempDir()})
	must(t, err)
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	f.waitRunning(t, "demo", 1)
	base := "http://" + a.HTTPAddr() // listening once an instance runs

	code, b := apiDo(t, "GET", base+"/v1/apps/demo/deployment", "")
	wantAPIError(t, "deployment of an app without one", code, 404, b, "not_found")
	code, b = apiDo(t, "GET", base+"/v1/apps/nope/deployments", "")
	wantAPIError(t, "history of an unknown app", code, 404, b, "not_found")
	code, b = apiDo(t, "GET", base+"/v1/apps/demo/deployments", "")
	if code != 200 || strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("history of an app without deployments: %d %s, want 200 []", code, b)
	}

	// A canary that waits for promotion, paused at once: the driver
	// leaves it where it is.
	zero := registry.Duration(0)
	d, err := f.reg.CreateDeployment(f.ctx, registry.DeployRequest{App: "demo", Rev: "v2", By: "test",
		Override: &registry.Strategy{Canary: 1, MinHealthy: &zero}})
	must(t, err)
	code, b = apiDo(t, "POST", base+"/v1/apps/demo/deployment/pause", "")
	var got registry.Deployment
	if code != 200 || json.Unmarshal(b, &got) != nil || got.ID != d.ID || got.State != registry.DeployPaused {
		t.Fatalf("pause: %d %s", code, b)
	}
	code, b = apiDo(t, "POST", base+"/v1/apps/demo/deployment/pause", "")
	wantAPIError(t, "pause of a paused deployment", code, 400, b, "bad_request")
	code, b = apiDo(t, "POST", base+"/v1/apps/demo/deployment/frob", "")
	wantAPIError(t, "unknown action", code, 404, b, "unknown_action")
	code, b = apiDo(t, "GET", base+"/v1/apps/demo/deployment", "")
	if code != 200 || json.Unmarshal(b, &got) != nil || got.ID != d.ID || got.Rev != "v2" {
		t.Errorf("deployment: %d %s", code, b)
	}
	code, b = apiDo(t, "POST", base+"/v1/apps/demo/rollback", `{"rev": "v9"}`)
	wantAPIError(t, "rollback to an unknown revision", code, 404, b, "not_found")
	code, b = apiDo(t, "POST", base+"/v1/apps/demo/rollback", `{"rev": `)
	wantAPIError(t, "rollback with a bad body", code, 400, b, "invalid_body")
	code, b = apiDo(t, "POST", base+"/v1/apps/demo/rollback", "")
	wantAPIError(t, "rollback to the revision running every instance", code, 400, b, "bad_request")
	code, b = apiDo(t, "POST", base+"/v1/apps/demo/rollback", `{"rev": "v2"}`)
	if code != 201 || json.Unmarshal(b, &got) != nil || got.RevertOf != d.ID || got.Rev != "v2" || got.By != anonymousPrincipal {
		t.Fatalf("rollback: %d %s, want 201 with a deployment to v2 reverting %s by %s", code, b, d.ID, anonymousPrincipal)
	}
	code, b = apiDo(t, "GET", base+"/v1/apps/demo/deployments", "")
	var hist []registry.Deployment
	if code != 200 || json.Unmarshal(b, &hist) != nil || len(hist) != 2 || hist[0].State != registry.DeployCancelled {
		t.Errorf("history: %d %s, want the cancelled canary deployment and the rollback", code, b)
	}

	proctest.WaitFor(t, 60*time.Second, "the deployment metrics", func() bool {
		_, m := apiDo(t, "GET", base+"/metrics", "")
		return strings.Contains(string(m), `visor_deployments{state="cancelled"} 1`) &&
			strings.Contains(string(m), `visor_revision_instances_running{app="demo",proc="web",rev="v1"}`)
	})
}
