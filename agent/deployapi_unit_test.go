package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/visorhq/visor/internal/apierror"
	"github.com/visorhq/visor/registry"
)

// The deployment routes on a fake of their own narrow interface
// (deployRegistry), served in memory: no etcd, no listener.
// TestDeployAPI (deployapi_test.go) runs them on a real registry.

// fakeDeployRegistry records its calls and answers err (nil: a
// deployment of the app asked for).
type fakeDeployRegistry struct {
	mu      sync.Mutex
	calls   []string
	err     error
	history []registry.Deployment
}

func (f *fakeDeployRegistry) call(format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
	return f.err
}

func (f *fakeDeployRegistry) App(_ context.Context, name string) (registry.App, error) {
	return registry.App{Name: name}, f.call("app %s", name)
}

func (f *fakeDeployRegistry) Deployment(_ context.Context, app string) (registry.Deployment, error) {
	return registry.Deployment{App: app, ID: "d-1"}, f.call("deployment %s", app)
}

func (f *fakeDeployRegistry) Deployments(_ context.Context, app string) ([]registry.Deployment, error) {
	return f.history, f.call("deployments %s", app)
}

func (f *fakeDeployRegistry) DeploymentAction(_ context.Context, app string, a registry.DeployAction) (registry.Deployment, error) {
	return registry.Deployment{App: app, ID: "d-1"}, f.call("action %s %s", app, a)
}

func (f *fakeDeployRegistry) Rollback(_ context.Context, app, rev, by string) (registry.Deployment, error) {
	return registry.Deployment{App: app, ID: "d-2", Rev: rev}, f.call("rollback %s rev=%q by=%s", app, rev, by)
}

func TestDeployAPIRoutes(t *testing.T) {
	for _, tc := range []struct {
		name, method, path, body string
		err                      error
		by                       string // the request's principal, "" none
		wantStatus               int
		wantBody                 string // a substring of the body
		wantCalls                []string
	}{
		{name: "deployment", method: "GET", path: "/v1/apps/web/deployment",
			wantStatus: 200, wantBody: `"id": "d-1"`, wantCalls: []string{"deployment web"}},
		{name: "deployment of an unknown app", method: "GET", path: "/v1/apps/web/deployment", err: registry.ErrNotFound,
			wantStatus: 404, wantBody: `"code":"not_found"`, wantCalls: []string{"deployment web"}},
		{name: "history without deployments is an empty list", method: "GET", path: "/v1/apps/web/deployments",
			wantStatus: 200, wantBody: "[]", wantCalls: []string{"app web", "deployments web"}},
		{name: "history of an unknown app", method: "GET", path: "/v1/apps/web/deployments", err: registry.ErrNotFound,
			wantStatus: 404, wantCalls: []string{"app web"}},
		{name: "pause", method: "POST", path: "/v1/apps/web/deployment/pause",
			wantStatus: 200, wantBody: `"id": "d-1"`, wantCalls: []string{"action web pause"}},
		{name: "unknown action reaches no registry", method: "POST", path: "/v1/apps/web/deployment/explode",
			wantStatus: 404, wantBody: `"code":"unknown_action"`},
		{name: "action refused in the deployment's state", method: "POST", path: "/v1/apps/web/deployment/promote",
			err: registry.ErrConflict, wantStatus: 409, wantCalls: []string{"action web promote"}},
		{name: "registry that does not answer", method: "POST", path: "/v1/apps/web/deployment/resume",
			err: context.DeadlineExceeded, wantStatus: 503, wantBody: "registry did not answer", wantCalls: []string{"action web resume"}},
		{name: "rollback with an empty body, by the principal", method: "POST", path: "/v1/apps/web/rollback", by: "ci",
			wantStatus: 201, wantBody: `"id": "d-2"`, wantCalls: []string{`rollback web rev="" by=ci`}},
		{name: "rollback to a named revision", method: "POST", path: "/v1/apps/web/rollback", body: `{"rev":"v3"}`,
			wantStatus: 201, wantCalls: []string{`rollback web rev="v3" by=unknown`}},
		{name: "rollback with a bad body reaches no registry", method: "POST", path: "/v1/apps/web/rollback", body: `{"revision":"v3"}`,
			wantStatus: 400, wantBody: `"code":"invalid_body"`},
		{name: "rollback while a deployment is active", method: "POST", path: "/v1/apps/web/rollback",
			err: registry.ErrDeployActive, wantStatus: 409, wantCalls: []string{`rollback web rev="" by=unknown`}},
		{name: "invalid input", method: "POST", path: "/v1/apps/web/rollback", body: `{"rev":"bad rev"}`,
			err: registry.ErrInvalid, wantStatus: 400, wantCalls: []string{`rollback web rev="bad rev" by=unknown`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := &fakeDeployRegistry{err: tc.err}
			mux := http.NewServeMux()
			deployAPI{reg: reg}.routes(mux)
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.by != "" {
				req = req.WithContext(context.WithValue(req.Context(), principalKey{}, principal{name: tc.by}))
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			if rec.Code != tc.wantStatus || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Errorf("%s %s: %d %s, want %d with %s", tc.method, tc.path, rec.Code, rec.Body, tc.wantStatus, tc.wantBody)
			}
			if rec.Code >= 400 && !strings.Contains(rec.Body.String(), `"error":`) {
				t.Errorf("error answer %s is not the API's error body (%T)", rec.Body, apierror.Body{})
			}
			if !slices.Equal(reg.calls, tc.wantCalls) {
				t.Errorf("registry calls %q, want %q", reg.calls, tc.wantCalls)
			}
		})
	}
}
