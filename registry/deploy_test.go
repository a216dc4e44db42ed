package registry

import (
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func dur(d time.Duration) *Duration { v := Duration(d); return &v }

func TestStrategy(t *testing.T) {
	t.Parallel()
	d := Strategy{}.WithDefaults()
	if d.MaxParallel != 1 || d.MinHealthyTime() != 10*time.Second || time.Duration(d.HealthyDeadline) != 5*time.Minute ||
		time.Duration(d.ProgressDeadline) != 10*time.Minute || d.Canary != 0 || d.AutoRevert || d.AutoPromote {
		t.Fatalf("defaults = %+v", d)
	}
	zero := Strategy{MinHealthy: dur(0)}.WithDefaults()
	if zero.MinHealthyTime() != 0 {
		t.Fatalf("explicit min healthy 0 became %s", zero.MinHealthyTime())
	}
	m := Strategy{MaxParallel: 3, AutoRevert: true}.Merge(&Strategy{MaxParallel: 2, MinHealthy: dur(0), Canary: 1})
	if m.MaxParallel != 2 || m.MinHealthyTime() != 0 || m.Canary != 1 || !m.AutoRevert {
		t.Fatalf("merge = %+v", m)
	}
	for _, c := range []struct {
		s    Strategy
		want string
	}{
		{Strategy{MaxParallel: -1}, "max parallel -1 is negative"},
		{Strategy{MinHealthy: dur(-time.Second)}, "min healthy -1s is negative"},
		{Strategy{HealthyDeadline: -1}, "healthy deadline"},
		{Strategy{ProgressDeadline: -1}, "progress deadline"},
		{Strategy{Canary: -2}, "canary -2 is negative"},
		{Strategy{HealthyDeadline: Duration(5 * time.Second)}, "healthy deadline 5s must be longer than min healthy 10s"},
		{Strategy{ProgressDeadline: Duration(time.Minute)}, "progress deadline 1m0s must not be shorter"},
	} {
		err := c.s.Valid()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Valid(%+v) = %v, want ErrInvalid with %q", c.s, err, c.want)
		}
	}
	s, err := ParseStrategy(map[string]string{"max-parallel": "2", "min_healthy": "0", "healthy-deadline": "1m",
		"progress-deadline": "2m", "canary": "1", "auto-revert": "true", "auto-promote": "false"})
	must(t, err)
	if s.MaxParallel != 2 || s.MinHealthy == nil || *s.MinHealthy != 0 || time.Duration(s.HealthyDeadline) != time.Minute ||
		s.Canary != 1 || !s.AutoRevert || s.AutoPromote {
		t.Fatalf("parsed %+v", s)
	}
	for in, want := range map[string]string{
		"max-parallel=0":        "max-parallel \"0\": must be at least 1",
		"max-parallel=x":        "not a whole number",
		"canary=-1":             "canary \"-1\": is negative",
		"min-healthy=10":        "min-healthy \"10\": not a duration",
		"healthy-deadline=0s":   "healthy-deadline \"0s\": must be more than 0",
		"progress-deadline=-1m": "is negative",
		"auto-revert=maybe":     "not true or false",
		"speed=3":               "unknown strategy field \"speed\"",
	} {
		k, v, _ := strings.Cut(in, "=")
		_, err := ParseStrategy(map[string]string{k: v})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseStrategy(%s) = %v, want ErrInvalid with %q", in, err, want)
		}
	}
}

// seedDeploy registers app with revisions v1 and v2 (and v3), process
// types web (with strategy upd) and worker, and scales v1 web=3 worker=1.
func seedDeploy(t *testing.T, r *Registry, app string, upd *Strategy) {
	t.Helper()
	ctx := testCtx(t)
	seed(t, r, app, "v1", "worker")
	seed(t, r, app, "v2", "worker")
	seed(t, r, app, "v3", "worker")
	_, err := r.SetProcType(ctx, ProcType{App: app, Name: "web", Command: "sleep 1000", Update: upd})
	must(t, err)
	_, err = r.Scale(ctx, app, "v1", "web", 3)
	must(t, err)
	_, err = r.Scale(ctx, app, "v1", "worker", 1)
	must(t, err)
}

func TestCreateDeployment(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "shop", &Strategy{MaxParallel: 2, AutoRevert: true})
	_, err := r.Scale(ctx, "shop", "v2", "web", 1) // one by hand already
	must(t, err)

	d, err := r.CreateDeployment(ctx, DeployRequest{App: "shop", Rev: "v2", Override: &Strategy{MinHealthy: dur(0)}, By: "ann@box"})
	must(t, err)
	if d.State != DeployRunning || d.Rev != "v2" || d.By != "ann@box" || !strings.HasPrefix(d.ID, "d-") || d.ModRevision == 0 {
		t.Fatalf("deployment = %+v", d)
	}
	if len(d.Procs) != 2 || d.Procs[0].Proc != "web" || d.Procs[1].Proc != "worker" {
		t.Fatalf("procs = %+v", d.Procs)
	}
	web := d.Procs[0]
	if web.Count != 4 || web.NewBefore != 1 || web.From["v1"] != 3 || len(web.From) != 1 || !web.Promoted {
		t.Fatalf("web = %+v", web)
	}
	if s := web.Strategy; s.MaxParallel != 2 || !s.AutoRevert || s.MinHealthyTime() != 0 || s.HealthyDeadline == 0 {
		t.Fatalf("web strategy = %+v (want the proc's, the override's min healthy, defaults)", s)
	}
	if w := d.Procs[1]; w.Count != 1 || w.Strategy.MaxParallel != 1 || w.Strategy.MinHealthyTime() != 0 {
		t.Fatalf("worker = %+v", w)
	}
	got, err := r.Deployment(ctx, "shop")
	must(t, err)
	if got.ID != d.ID || got.ModRevision != d.ModRevision {
		t.Fatalf("Deployment = %+v, want %+v", got, d)
	}
	act, err := r.ActiveDeployments(ctx)
	must(t, err)
	if !containsDeploy(act, d.ID) {
		t.Fatalf("active deployments %+v lack %s", act, d.ID)
	}

	// A second deployment is refused while this one is active...
	_, err = r.CreateDeployment(ctx, DeployRequest{App: "shop", Rev: "v3"})
	mustIs(t, err, ErrDeployActive)
	if !strings.Contains(err.Error(), d.ID) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("error %q does not name the active deployment and --force", err)
	}
	// ...and with Force replaces it, which ends cancelled in the history.
	d3, err := r.CreateDeployment(ctx, DeployRequest{App: "shop", Rev: "v3", Procs: []string{"web"}, Force: true})
	must(t, err)
	if len(d3.Procs) != 1 || d3.Procs[0].From["v1"] != 3 || d3.Procs[0].From["v2"] != 1 || d3.Procs[0].Count != 4 {
		t.Fatalf("forced deployment = %+v", d3.Procs)
	}
	hist, err := r.Deployments(ctx, "shop")
	must(t, err)
	if len(hist) != 2 || hist[0].ID != d.ID || hist[0].State != DeployCancelled || hist[0].Ended.IsZero() ||
		!strings.Contains(hist[0].Reason, d3.ID) || hist[1].ID != d3.ID || hist[1].State != DeployRunning {
		t.Fatalf("history = %+v", hist)
	}
}

func containsDeploy(ds []Deployment, id string) bool {
	for _, d := range ds {
		if d.ID == id {
			return true
		}
	}
	return false
}

func TestCreateDeploymentBadInput(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "bad", nil)
	_, err := r.SetProcType(ctx, ProcType{App: "bad", Name: "idle", Command: "sleep 1"}) // never scaled
	must(t, err)
	_, err = r.Scale(ctx, "bad", "v2", "worker", 0)
	must(t, err)
	for name, c := range map[string]struct {
		req  DeployRequest
		is   error
		want string
	}{
		"unknown app":       {DeployRequest{App: "nope", Rev: "v2"}, ErrNotFound, `app "nope"`},
		"unknown revision":  {DeployRequest{App: "bad", Rev: "v9"}, ErrNotFound, `revision "v9"`},
		"bad app name":      {DeployRequest{App: "Bad", Rev: "v2"}, ErrInvalid, `"Bad"`},
		"bad revision name": {DeployRequest{App: "bad", Rev: "v/2"}, ErrInvalid, `"v/2"`},
		"unknown proc":      {DeployRequest{App: "bad", Rev: "v2", Procs: []string{"db"}}, ErrNotFound, `process type "db"`},
		"proc not scaled":   {DeployRequest{App: "bad", Rev: "v2", Procs: []string{"idle"}}, ErrInvalid, `"idle" of app "bad" has no instances`},
		"already running":   {DeployRequest{App: "bad", Rev: "v1"}, ErrInvalid, `revision "v1" already runs every instance`},
		"already running proc": {DeployRequest{App: "bad", Rev: "v1", Procs: []string{"web"}}, ErrInvalid,
			`already runs every instance of "web"`},
		"negative parallel": {DeployRequest{App: "bad", Rev: "v2", Override: &Strategy{MaxParallel: -1}}, ErrInvalid, "max parallel -1"},
		"deadline too short": {DeployRequest{App: "bad", Rev: "v2", Override: &Strategy{HealthyDeadline: Duration(time.Second)}},
			ErrInvalid, "healthy deadline 1s"},
		"negative canary": {DeployRequest{App: "bad", Rev: "v2", Override: &Strategy{Canary: -1}}, ErrInvalid, "canary -1"},
	} {
		t.Run(name, func(t *testing.T) {
			before := keyCount(t, cli, r.Prefix())
			_, err := r.CreateDeployment(ctx, c.req)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CreateDeployment(%+v) = %v, want %v naming %s", c.req, err, c.is, c.want)
			}
			if after := keyCount(t, cli, r.Prefix()); after != before {
				t.Fatalf("a refused deployment wrote %d keys", after-before)
			}
		})
	}
	// A process type's strategy is checked when it is set.
	_, err = r.SetProcType(ctx, ProcType{App: "bad", Name: "web", Update: &Strategy{ProgressDeadline: Duration(time.Second)}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "update strategy: ") {
		t.Fatalf("SetProcType with a bad strategy = %v", err)
	}
	_, err = r.Deployment(ctx, "bad")
	mustIs(t, err, ErrNotFound)
	_, err = r.Rollback(ctx, "bad", "", "")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "name the revision") {
		t.Fatalf("Rollback without deployments = %v", err)
	}
}

func TestDeployStep(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "step", nil)
	d, err := r.CreateDeployment(ctx, DeployRequest{App: "step", Rev: "v2", Procs: []string{"web"}})
	must(t, err)
	rev0, err := r.CurrentRevision(ctx)
	must(t, err)

	// One step: v2 web 0 -> 1 (a start ticket), progress written.
	next := d
	next.Procs = append([]DeployProc(nil), d.Procs...)
	next.Procs[0].Placed = 1
	d2, err := r.DeployStep(ctx, d, DeployChange{Scales: []DeployScale{{Rev: "v2", Proc: "web", From: 0, To: 1}}, Next: next})
	must(t, err)
	if n, _ := r.CurrentScale(ctx, "step", "v2", "web"); n != 1 {
		t.Fatalf("v2 web scale = %d after the step", n)
	}
	if d2.ModRevision <= d.ModRevision || d2.Procs[0].Placed != 1 {
		t.Fatalf("stepped record = %+v", d2)
	}
	evs, err := r.Events(ctx, rev0+1, 0)
	must(t, err)
	if !hasEvent(evs, DeployChanged, "step") || !hasEvent(evs, ScaleChanged, "step") || !hasEvent(evs, TicketCreated, "step") {
		t.Fatalf("the step's events %+v lack a deploy, scale or ticket event", evs)
	}

	// A stale leader's step (planned on the older record) is refused and
	// writes nothing.
	before := keyMods(t, cli, r.Prefix())
	_, err = r.DeployStep(ctx, d, DeployChange{Scales: []DeployScale{{Rev: "v2", Proc: "web", From: 0, To: 2},
		{Rev: "v1", Proc: "web", From: 3, To: 2}}, Next: next})
	mustIs(t, err, ErrStale)
	// So is one planned on a scale that changed since.
	_, err = r.DeployStep(ctx, d2, DeployChange{Scales: []DeployScale{{Rev: "v2", Proc: "web", From: 0, To: 2}}, Next: d2})
	mustIs(t, err, ErrStale)
	if !strings.Contains(err.Error(), "scale v2/web is 1, planned from 0") {
		t.Fatalf("stale scale error %q", err)
	}
	if after := keyMods(t, cli, r.Prefix()); !maps.Equal(after, before) {
		t.Fatalf("refused steps wrote: keys and mod revisions %v -> %v", before, after)
	}

	// A terminal step moves the record to the history.
	end := d2
	end.State = DeploySucceeded
	d3, err := r.DeployStep(ctx, d2, DeployChange{Scales: []DeployScale{{Rev: "v1", Proc: "web", From: 3, To: 0}}, Next: end})
	must(t, err)
	if n, _ := r.CurrentScale(ctx, "step", "v1", "web"); n != 0 {
		t.Fatalf("v1 web scale = %d after the last step", n)
	}
	got, err := r.Deployment(ctx, "step")
	must(t, err)
	if got.State != DeploySucceeded || got.Ended.IsZero() || d3.ModRevision != 0 {
		t.Fatalf("ended deployment = %+v", got)
	}
	if resp, err := cli.Get(ctx, r.deployingKey("step")); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("active key after the end: %v %v", resp, err)
	}
	// The app can deploy again.
	_, err = r.CreateDeployment(ctx, DeployRequest{App: "step", Rev: "v3", Procs: []string{"web"}})
	must(t, err)
}

// keyMods returns the mod revision of every key under prefix.
func keyMods(t *testing.T, cli *clientv3.Client, prefix string) map[string]int64 {
	t.Helper()
	resp, err := cli.Get(testCtx(t), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	must(t, err)
	out := make(map[string]int64, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.ModRevision
	}
	return out
}

func hasEvent(evs []Event, typ EventType, app string) bool {
	for _, e := range evs {
		if e.Type == typ && e.App == app && e.Err == nil {
			return true
		}
	}
	return false
}

func TestDeploymentActions(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "act", nil)
	_, err := r.DeploymentAction(ctx, "act", DeployPause)
	mustIs(t, err, ErrNotFound)
	d, err := r.CreateDeployment(ctx, DeployRequest{App: "act", Rev: "v2", Procs: []string{"web"}, Override: &Strategy{Canary: 1}})
	must(t, err)
	if d.Procs[0].Promoted {
		t.Fatal("a canary deployment starts promoted")
	}
	step := func(a DeployAction, want DeployState) Deployment {
		t.Helper()
		got, err := r.DeploymentAction(ctx, "act", a)
		must(t, err)
		if got.State != want {
			t.Fatalf("%s: state %s, want %s", a, got.State, want)
		}
		return got
	}
	refused := func(a DeployAction, want string) {
		t.Helper()
		_, err := r.DeploymentAction(ctx, "act", a)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s = %v, want ErrInvalid with %q", a, err, want)
		}
	}
	refused(DeployResume, "cannot resume deployment "+d.ID+` of app "act": it is running`)
	refused(DeployPromote, "canaries not all healthy yet")
	refused("speed-up", "unknown deployment action")
	step(DeployPause, DeployPaused)
	refused(DeployPause, "it is paused already")
	step(DeployResume, DeployRunning)
	// The driver says the canaries are healthy: awaiting promotion.
	cur, err := r.Deployment(ctx, "act")
	must(t, err)
	next := cur
	next.State = DeployAwaitingPromotion
	_, err = r.DeployStep(ctx, cur, DeployChange{Next: next})
	must(t, err)
	got := step(DeployPromote, DeployRunning)
	if !got.Procs[0].Promoted {
		t.Fatal("promote left the canaries unpromoted")
	}
	refused(DeployPromote, "not awaiting promotion")
	// Fail without auto-revert, promoted: failed, terminal, in history.
	got = step(DeployFail, DeployFailed)
	if got.Reason != "failed by operator" || got.Ended.IsZero() {
		t.Fatalf("failed = %+v", got)
	}
	_, err = r.DeploymentAction(ctx, "act", DeployResume)
	mustIs(t, err, ErrNotFound)

	// Fail with unpromoted canaries reverts them; failing the revert ends it.
	_, err = r.CreateDeployment(ctx, DeployRequest{App: "act", Rev: "v3", Procs: []string{"web"}, Override: &Strategy{Canary: 2}})
	must(t, err)
	step(DeployPause, DeployPaused)
	got = step(DeployFail, DeployReverting)
	if tg := got.Targets(got.Procs[0]); tg["v3"] != 0 || tg["v1"] != 3 {
		t.Fatalf("revert targets = %v", tg)
	}
	got = step(DeployFail, DeployFailed)
	if !strings.HasPrefix(got.Reason, "revert failed: failed by operator") {
		t.Fatalf("reason = %q", got.Reason)
	}
}

func TestScaleDuringDeployment(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "grow", nil)
	d, err := r.CreateDeployment(ctx, DeployRequest{App: "grow", Rev: "v2", Procs: []string{"web"}})
	must(t, err)
	// A scale of the target goes to the deployment: no scale key, no ticket.
	res, err := r.Scale(ctx, "grow", "v2", "web", 5)
	must(t, err)
	if res.Deployment != d.ID || res.Desired != 5 || len(res.Started) != 0 {
		t.Fatalf("scale during deployment = %+v", res)
	}
	if n, _ := r.CurrentScale(ctx, "grow", "v2", "web"); n != 0 {
		t.Fatalf("v2 web scale written: %d", n)
	}
	got, err := r.Deployment(ctx, "grow")
	must(t, err)
	if got.Procs[0].Count != 5 {
		t.Fatalf("count = %d, want 5", got.Procs[0].Count)
	}
	// Other scales are written as usual.
	res, err = r.Scale(ctx, "grow", "v1", "worker", 2)
	must(t, err)
	if res.Deployment != "" || len(res.Started) != 1 {
		t.Fatalf("scale of another revision = %+v", res)
	}
	// A forced delete of the app cancels the deployment and stops all.
	must(t, r.UnregisterApp(ctx, "grow", true))
	act, err := r.ActiveDeployments(ctx)
	must(t, err)
	if containsDeploy(act, d.ID) {
		t.Fatal("deleted app's deployment still active")
	}
}

func TestRollback(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "back", nil)
	d, err := r.CreateDeployment(ctx, DeployRequest{App: "back", Rev: "v2"})
	must(t, err)
	// Midway: v2 web 2, v1 web 1 (as a driver would leave it).
	next := d
	_, err = r.DeployStep(ctx, d, DeployChange{Scales: []DeployScale{{Rev: "v2", Proc: "web", From: 0, To: 2},
		{Rev: "v1", Proc: "web", From: 3, To: 1}}, Next: next})
	must(t, err)
	rb, err := r.Rollback(ctx, "back", "", "bob@box")
	must(t, err)
	if rb.Rev != "v1" || rb.RevertOf != d.ID || rb.By != "bob@box" || rb.State != DeployRunning {
		t.Fatalf("rollback = %+v", rb)
	}
	web, _ := rb.Proc("web")
	if web.Count != 3 || web.From["v2"] != 2 || web.NewBefore != 1 {
		t.Fatalf("rollback web = %+v", web)
	}
	hist, err := r.Deployments(ctx, "back")
	must(t, err)
	if len(hist) != 2 || hist[0].State != DeployCancelled {
		t.Fatalf("history = %+v", hist)
	}
	_, err = r.Rollback(ctx, "back", "v9", "")
	mustIs(t, err, ErrNotFound)
}

// TestDeployRecordsCheck: a deployment record that does not decode is a
// bad record for Check and skipped by the listings.
func TestDeployRecordsCheck(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "chk", nil)
	_, err := cli.Put(ctx, r.deployKey("chk", "d-1"), `{"app":"chk","id":"d-1","rev":"v1","state":"exploded"}`)
	must(t, err)
	_, err = cli.Put(ctx, r.deployingKey("chk"), `not json`)
	must(t, err)
	t.Cleanup(func() { _, _ = cli.Delete(ctx, r.deployingKey("chk")) })
	_, err = r.Deployments(ctx, "chk")
	bad, rest := Skipped(err)
	if rest != nil || len(bad) != 2 {
		t.Fatalf("Deployments error %v", err)
	}
	all, err := r.Check(ctx)
	must(t, err)
	n := 0
	for _, b := range all {
		if b.Kind == KindDeploy && strings.Contains(b.Key, "chk") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("Check found %d bad deployment records: %v", n, all)
	}
}

// TestDeployStepRace: leaders that planned the same step on the same read
// (a duplicate or a restarted one) race to write it: exactly one lands,
// the others are refused as stale, and the step's tickets exist once.
func TestDeployStepRace(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seedDeploy(t, r, "race", nil)
	d, err := r.CreateDeployment(ctx, DeployRequest{App: "race", Rev: "v2", Procs: []string{"web"}})
	must(t, err)
	const leaders = 8
	errs := make(chan error, leaders)
	var wg sync.WaitGroup
	for range leaders {
		wg.Go(func() {
			_, err := r.DeployStep(ctx, d, DeployChange{Scales: []DeployScale{{Rev: "v2", Proc: "web", From: 0, To: 2},
				{Rev: "v1", Proc: "web", From: 3, To: 2}}, Next: d})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	landed := 0
	for err := range errs {
		switch {
		case err == nil:
			landed++
		case !errors.Is(err, ErrStale):
			t.Errorf("a racing step failed otherwise: %v", err)
		}
	}
	if landed != 1 {
		t.Fatalf("%d racing steps landed, want exactly 1", landed)
	}
	tickets, err := r.Tickets(ctx)
	must(t, err)
	starts := map[string]int{}
	for _, tk := range tickets {
		if tk.App == "race" && tk.Proc == "web" && tk.Op == TicketStart {
			starts[tk.Rev]++
		}
	}
	// v1's instances were never claimed: the step cancelled one start.
	for _, rev := range []string{"v1", "v2"} {
		if n, _ := r.CurrentScale(ctx, "race", rev, "web"); n != 2 || starts[rev] != 2 {
			t.Fatalf("%s scale %d with %d start tickets, want 2 and 2", rev, n, starts[rev])
		}
	}
}
