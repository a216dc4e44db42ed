package ui

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"github.com/visorhq/visor/registry"
)

// maxPastDeploys bounds the past deployments the app page lists.
const maxPastDeploys = 10

// deploysData is the deployments part of the app page.
type deploysData struct {
	// Active is the deployment under way, if any.
	Active *registry.Deployment
	Procs  []deployRow
	// Past are the ended deployments, newest first, at most
	// maxPastDeploys; More counts the ones left off.
	Past []registry.Deployment
	More int
}

// deployRow is one process type of the active deployment: its progress
// toward Target (the instances it moves to, over all revisions).
type deployRow struct {
	registry.DeployProc
	Target int
}

// CanPromote reports whether promote means something now (the
// deployment awaits promotion).
func (d deploysData) CanPromote() bool {
	return d.Active != nil && d.Active.State == registry.DeployAwaitingPromotion
}

// CanPause reports whether an active deployment can be paused.
func (d deploysData) CanPause() bool {
	return d.Active != nil && d.Active.State != registry.DeployPaused
}

// CanResume reports whether the deployment is paused.
func (d deploysData) CanResume() bool {
	return d.Active != nil && d.Active.State == registry.DeployPaused
}

// readDeploys reads the app's deployments; corrupt records are skipped.
func (h *Handler) readDeploys(ctx context.Context, app string) (deploysData, error) {
	all, err := h.cfg.Registry.Deployments(ctx, app)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return deploysData{}, err
	}
	var d deploysData
	if n := len(all); n > 0 && all[n-1].Active() {
		a := all[n-1]
		d.Active, all = &a, all[:n-1]
		for _, p := range a.Procs {
			row := deployRow{DeployProc: p}
			for _, n := range a.Targets(p) {
				row.Target += n
			}
			d.Procs = append(d.Procs, row)
		}
	}
	slices.Reverse(all)
	if len(all) > maxPastDeploys {
		d.More, all = len(all)-maxPastDeploys, all[:maxPastDeploys]
	}
	d.Past = all
	return d, nil
}

// deployQuestions are the confirmation questions of the deployment
// actions (%[1]s the deployment, %[2]s the app, %[3]s its revision).
var deployQuestions = map[registry.DeployAction]string{
	registry.DeployPromote: "Promote deployment %[1]s of %[2]s? The rest of the instances move to %[3]s after the canaries.",
	registry.DeployFail:    "Fail deployment %[1]s of %[2]s? With auto-revert or canaries not yet promoted it reverts to the old revisions; else it stops where it is.",
	registry.DeployPause:   "Pause deployment %[1]s of %[2]s? It takes no more steps (and no deadline runs) until resumed.",
	registry.DeployResume:  "Resume deployment %[1]s of %[2]s to %[3]s?",
}

// actDeploy applies an operator's action to the app's active deployment.
// The form names the deployment the page showed: if another one (or none)
// is active by the confirmation, nothing is done and the page says so.
func (h *Handler) actDeploy(w http.ResponseWriter, r *http.Request) {
	app, op, id := r.PathValue("app"), registry.DeployAction(r.PathValue("op")), r.PostFormValue("id")
	q, ok := deployQuestions[op]
	if !ok {
		h.notFound(w, r, fmt.Sprintf("There is no deployment action %q.", op))
		return
	}
	cur, err := h.cfg.Registry.Deployment(r.Context(), app)
	if err == nil && (!cur.Active() || cur.ID != id) {
		now := "no deployment is active now"
		if cur.Active() {
			now = fmt.Sprintf("deployment %s is active now", cur.ID)
		}
		h.message(w, r, http.StatusConflict, "Refused",
			fmt.Sprintf("Deployment %s of %s is no longer the active one (%s); nothing was done. Reload the app page.", id, app, now))
		return
	}
	if err != nil {
		h.actionError(w, r, fmt.Sprintf("Could not read the deployment of %s", app), err)
		return
	}
	if !h.confirmed(w, r, fmt.Sprintf(q, id, app, cur.Rev), op == registry.DeployFail, "id") {
		return
	}
	if _, err := h.cfg.Registry.DeploymentAction(r.Context(), app, op); err != nil {
		h.actionError(w, r, fmt.Sprintf("Could not %s deployment %s of %s", op, id, app), err)
		return
	}
	h.done(w, r, "/ui/apps/"+url.PathEscape(app))
}
