package ui

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// deployFixture is the fixture's demo app on v1 (2 instances of web),
// with a v2 and a deployment to it whose web has one canary.
func deployFixture(t *testing.T) (*fixture, registry.Deployment) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	if _, err := f.reg.RegisterRevision(ctx, registry.Revision{App: "demo", Name: "v2", Dir: "/srv/demo2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Scale(ctx, "demo", "v1", "web", 2); err != nil {
		t.Fatal(err)
	}
	d, err := f.reg.CreateDeployment(ctx, registry.DeployRequest{App: "demo", Rev: "v2", By: "ann@<laptop>",
		Override: &registry.Strategy{Canary: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return f, d
}

// TestDeploymentOnAppPage: the app page shows the active deployment with
// its progress per process type (escaped) and the actions its state
// allows; promote appears once it awaits promotion, and a promote from
// the page (asked, then confirmed) moves it on in the registry.
func TestDeploymentOnAppPage(t *testing.T) {
	f, d := deployFixture(t)
	ctx := testCtx(t)
	_, body := f.get(t, "/ui/apps/demo")
	mustContain(t, body, `data-deploy="`+d.ID+`"`, `data-deploy-state="running"`, `data-deploy-proc="web"`,
		"by ann@&lt;laptop&gt;", `<progress max="2" value="0"`, `id="deploy-fail"`, `id="deploy-pause"`, "1 (not promoted)")
	if strings.Contains(body, `id="deploy-promote"`) {
		t.Fatal("promote offered while the deployment is not awaiting promotion")
	}

	// The driver's step: the canary is healthy, the deployment awaits
	// promotion.
	next := d
	next.State = registry.DeployAwaitingPromotion
	next.Procs = append([]registry.DeployProc(nil), d.Procs...)
	next.Procs[0].Placed, next.Procs[0].Healthy, next.Procs[0].Settled = 1, 1, 1
	if _, err := f.reg.DeployStep(ctx, d, registry.DeployChange{Next: next}); err != nil {
		t.Fatal(err)
	}
	_, body = f.get(t, "/ui/apps/demo")
	mustContain(t, body, `data-deploy-state="awaiting_promotion"`, `id="deploy-promote"`, `<progress max="2" value="1"`)

	form := url.Values{"id": {d.ID}, "back": {"/ui/apps/demo"}}
	code, body, _ := f.post(t, "/ui/apps/demo/deploy/promote", form)
	if code != http.StatusOK || !strings.Contains(body, "Promote deployment "+d.ID+" of demo?") {
		t.Fatalf("promote without confirm=yes: %d\n%s", code, body)
	}
	if cur, _ := f.reg.Deployment(ctx, "demo"); cur.State != registry.DeployAwaitingPromotion {
		t.Fatalf("the question alone changed the deployment: %s", cur.State)
	}
	form.Set("confirm", "yes")
	code, _, loc := f.post(t, "/ui/apps/demo/deploy/promote", form)
	if code != http.StatusSeeOther || loc != "/ui/apps/demo" {
		t.Fatalf("confirmed promote: %d to %q", code, loc)
	}
	cur, err := f.reg.Deployment(ctx, "demo")
	if err != nil || cur.State != registry.DeployRunning || !cur.Procs[0].Promoted {
		t.Fatalf("after promote: %+v, %v", cur, err)
	}
}

// TestDeploymentActionsRefusedClearly: an action the state does not allow
// shows the registry's reason; one from a stale page (another deployment
// active, or none) does nothing and says so; fail ends it (the canary not
// promoted, it reverts) and it is then listed with its reason.
func TestDeploymentActionsRefusedClearly(t *testing.T) {
	f, d := deployFixture(t)
	ctx := testCtx(t)
	yes := url.Values{"id": {d.ID}, "confirm": {"yes"}, "back": {"/ui/apps/demo"}}
	code, body, _ := f.post(t, "/ui/apps/demo/deploy/resume", yes)
	if code != http.StatusBadRequest || !strings.Contains(body, "cannot resume deployment") {
		t.Fatalf("resume of a running deployment: %d\n%s", code, body)
	}
	stale := url.Values{"id": {"d-0000000000000000-00000000"}, "confirm": {"yes"}}
	code, body, _ = f.post(t, "/ui/apps/demo/deploy/fail", stale)
	if code != http.StatusConflict || !strings.Contains(body, "is no longer the active one (deployment "+d.ID+" is active now); nothing was done") {
		t.Fatalf("fail from a stale page: %d\n%s", code, body)
	}
	if code, _, _ := f.post(t, "/ui/apps/demo/deploy/delete", yes); code != http.StatusNotFound {
		t.Fatalf("unknown deployment action: %d", code)
	}
	code, _, _ = f.post(t, "/ui/apps/demo/deploy/fail", yes)
	if code != http.StatusSeeOther {
		t.Fatalf("confirmed fail: %d", code)
	}
	cur, err := f.reg.Deployment(ctx, "demo")
	if err != nil || cur.State != registry.DeployReverting {
		t.Fatalf("after fail with an unpromoted canary: %+v, %v", cur, err)
	}
	// The revert ends (the driver's last step); the page lists it as past.
	end := cur
	end.State, end.Ended = registry.DeployReverted, time.Now()
	if _, err := f.reg.DeployStep(ctx, cur, registry.DeployChange{Next: end}); err != nil {
		t.Fatal(err)
	}
	_, body = f.get(t, "/ui/apps/demo")
	mustContain(t, body, `data-past-deploy="`+d.ID+`"`, "failed by operator", "No deployment under way")
	code, body, _ = f.post(t, "/ui/apps/demo/deploy/fail", yes)
	if code != http.StatusConflict || !strings.Contains(body, "no deployment is active now") {
		t.Fatalf("fail with none active: %d\n%s", code, body)
	}
}
