package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/visorhq/visor/internal/apierror"
	"github.com/visorhq/visor/registry"
)

// The deployment routes (issue 18). They read and write the registry, so
// any agent answers them for the whole fleet; the elected reconciler
// carries deployments out.
//
//	GET  /v1/apps/{app}/deployment               the active deployment, else the latest (read)
//	GET  /v1/apps/{app}/deployments              history, oldest first (read)
//	POST /v1/apps/{app}/deployment/{action}      pause, resume, fail or promote (operator)
//	POST /v1/apps/{app}/rollback                 {"rev": ""}: deploy the previous (or named) revision (operator)
func (api deployAPI) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/apps/{app}/deployment", api.handleDeployment)
	mux.HandleFunc("GET /v1/apps/{app}/deployments", api.handleDeployments)
	mux.HandleFunc("POST /v1/apps/{app}/deployment/{action}", api.handleDeployAction)
	mux.HandleFunc("POST /v1/apps/{app}/rollback", api.handleRollback)
}

// deployRegistry is what the deployment routes read and write
// (*registry.Registry).
type deployRegistry interface {
	App(ctx context.Context, name string) (registry.App, error)
	Deployment(ctx context.Context, app string) (registry.Deployment, error)
	Deployments(ctx context.Context, app string) ([]registry.Deployment, error)
	DeploymentAction(ctx context.Context, app string, a registry.DeployAction) (registry.Deployment, error)
	Rollback(ctx context.Context, app, rev, by string) (registry.Deployment, error)
}

// deployAPI serves the deployment routes from the registry alone.
type deployAPI struct{ reg deployRegistry }

// deployAPITimeout bounds one registry call of a deployment route.
const deployAPITimeout = 10 * time.Second

func (api deployAPI) handleDeployment(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), deployAPITimeout)
	defer cancel()
	d, err := api.reg.Deployment(ctx, r.PathValue("app"))
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (api deployAPI) handleDeployments(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), deployAPITimeout)
	defer cancel()
	app := r.PathValue("app")
	if _, err := api.reg.App(ctx, app); err != nil {
		writeRegistryError(w, err)
		return
	}
	ds, err := api.reg.Deployments(ctx, app)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		writeRegistryError(w, err)
		return
	}
	if ds == nil {
		ds = []registry.Deployment{}
	}
	writeJSON(w, http.StatusOK, ds)
}

func (api deployAPI) handleDeployAction(w http.ResponseWriter, r *http.Request) {
	act := registry.DeployAction(r.PathValue("action"))
	switch act {
	case registry.DeployPause, registry.DeployResume, registry.DeployFail, registry.DeployPromote:
	default:
		apierror.WriteCode(w, http.StatusNotFound, "unknown_action", fmt.Sprintf("deployment action must be pause, resume, fail or promote, not %q", act))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), deployAPITimeout)
	defer cancel()
	d, err := api.reg.DeploymentAction(ctx, r.PathValue("app"), act)
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// RollbackRequest is the body of POST /v1/apps/{app}/rollback; Rev ""
// (or an empty body) is the revision the app ran before its latest
// deployment.
type RollbackRequest struct {
	Rev string `json:"rev"`
}

func (api deployAPI) handleRollback(w http.ResponseWriter, r *http.Request) {
	var req RollbackRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		apierror.WriteCode(w, http.StatusBadRequest, "invalid_body", `body must be JSON {"rev": "v1"} or empty: `+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), deployAPITimeout)
	defer cancel()
	d, err := api.reg.Rollback(ctx, r.PathValue("app"), req.Rev, principalName(r))
	if err != nil {
		writeRegistryError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, d)
}

// principalName is who made r (a token's name, uid:N on the socket), as a
// deployment records it.
func principalName(r *http.Request) string {
	if p, ok := r.Context().Value(principalKey{}).(principal); ok {
		return p.name
	}
	return "unknown"
}

// writeRegistryError answers a registry error with the status it means:
// bad input 400, missing 404, refused in the current state 409, an
// unreachable registry 503.
func writeRegistryError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, registry.ErrInvalid):
		apierror.Write(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, registry.ErrNotFound):
		apierror.Write(w, http.StatusNotFound, err.Error())
	case errors.Is(err, registry.ErrDeployActive), errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrConflict), errors.Is(err, registry.ErrStale):
		apierror.Write(w, http.StatusConflict, err.Error())
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		apierror.Write(w, http.StatusServiceUnavailable, "registry did not answer: "+err.Error())
	default:
		apierror.Write(w, http.StatusInternalServerError, err.Error())
	}
}
