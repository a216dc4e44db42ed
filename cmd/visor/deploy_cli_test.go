package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// deployApp registers app with revisions v1 and v2 (and v3 without any
// process type: see TestDeployBadInputWritesNothing), proc type web, and
// scales v1 web=2. No host runs anything: these tests are about the
// records the CLI writes and shows; the agent's driver is tested in
// agent/ and test/.
func deployApp(t *testing.T, h *harness, app string) {
	t.Helper()
	h.ok("app", "create", app)
	h.ok("rev", "register", app, "v1", "--dir", t.TempDir())
	h.ok("rev", "register", app, "v2", "--dir", t.TempDir())
	h.ok("proc", "set", app, "web", "--command", "exec sleep 3600")
	h.ok("scale", app, "v1", "web=2")
}

// revisionOf returns etcd's current revision: unchanged means nothing
// was written.
func revisionOf(t *testing.T, h *harness) int64 {
	t.Helper()
	rev, err := h.registry().CurrentRevision(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestDeployBadInputWritesNothing (issue 18, bad input): an unknown app or
// revision, a process type the app does not have, the revision already
// running, a second deployment while one is active, and actions that mean
// nothing in the deployment's state fail with a message naming the
// problem, and etcd's revision does not move.
func TestDeployBadInputWritesNothing(t *testing.T) {
	h := newHarness(t)
	deployApp(t, h, "demo")
	cases := []struct {
		name string
		code int
		want []string
		args []string
	}{
		{"unknown app", 1, []string{"nope"}, []string{"deploy", "nope", "v2"}},
		{"unknown revision", 1, []string{"v9"}, []string{"deploy", "demo", "v9"}},
		{"unknown process type", 1, []string{"worker"}, []string{"deploy", "demo", "v2", "--proc", "worker"}},
		{"revision already running", 2, []string{"v1"}, []string{"deploy", "demo", "v1"}},
		{"bad app name", 2, []string{"Bad_Name"}, []string{"deploy", "Bad_Name", "v2"}},
		{"status of none", 1, []string{"demo", "not found"}, []string{"deploy", "status", "demo"}},
		{"pause of none", 1, []string{"demo"}, []string{"deploy", "pause", "demo"}},
		{"rollback of none", 1, []string{"demo", "no deployment"}, []string{"rollback", "demo"}},
		{"deploys of unknown app", 1, []string{"nope"}, []string{"deploys", "nope"}},
		{"rollout of unknown app", 1, []string{"nope"}, []string{"env", "set", "nope", "A=1", "--rollout"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := revisionOf(t, h)
			h.fails(tc.code, tc.want, tc.args...)
			if after := revisionOf(t, h); after != before {
				t.Errorf("visor %s wrote to etcd (revision %d -> %d)", strings.Join(tc.args, " "), before, after)
			}
		})
	}

	h.ok("deploy", "demo", "v2", "--max-parallel", "2")
	for _, tc := range []struct {
		name string
		code int
		want []string
		args []string
	}{
		{"second deployment", 1, []string{"active", "--force"}, []string{"deploy", "demo", "v2"}},
		{"resume of a running one", 2, []string{"resume"}, []string{"deploy", "resume", "demo"}},
		{"promote without canaries", 2, []string{"promote"}, []string{"deploy", "promote", "demo"}},
		{"rollout while deploying", 1, []string{"active", "demo"}, []string{"env", "set", "demo", "A=1", "--rollout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := revisionOf(t, h)
			h.fails(tc.code, tc.want, tc.args...)
			if after := revisionOf(t, h); after != before {
				t.Errorf("visor %s wrote to etcd (revision %d -> %d)", strings.Join(tc.args, " "), before, after)
			}
		})
	}
}

// TestDeployCLI drives the deployment commands through a deployment's
// life as far as records go: create (text and JSON), status, pause and
// resume, fail, the history, and rollback.
func TestDeployCLI(t *testing.T) {
	h := newHarness(t)
	deployApp(t, h, "demo")
	out := h.ok("deploy", "demo", "v2", "--max-parallel", "2", "--min-healthy", "1s")
	if !strings.Contains(out, "deploying demo to v2") || !strings.Contains(out, "web 2 (from v1=2)") {
		t.Errorf("deploy output: %q", out)
	}
	var st map[string]any
	h.okJSON(&st, "deploy", "status", "demo")
	checkFields(t, "deploy status -o json", st, "app", "id", "rev", "from", "state", "by", "created", "updated", "procs")
	if st["state"] != "running" || st["rev"] != "v2" {
		t.Errorf("status %v", st)
	}
	procs := st["procs"].([]any)
	p := procs[0].(map[string]any)
	checkFields(t, "deploy status proc", p, "proc", "count", "from", "strategy", "old", "new", "progress")
	if s := p["strategy"].(map[string]any); s["max_parallel"] != 2.0 || s["min_healthy"] != "1s" {
		t.Errorf("strategy %v, want the override: max_parallel 2, min_healthy 1s", s)
	}
	text := h.ok("deploy", "status", "demo")
	for _, want := range []string{"v1 -> v2", "running", "OLD DESIRED", "0/2 healthy"} {
		if !strings.Contains(text, want) {
			t.Errorf("deploy status lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "[") {
		t.Errorf("deploy status draws a progress bar though stdout is not a terminal:\n%s", text)
	}
	if out := h.ok("deploy", "pause", "demo"); !strings.Contains(out, "paused") {
		t.Errorf("pause: %q", out)
	}
	if out := h.ok("deploy", "resume", "demo"); !strings.Contains(out, "running") {
		t.Errorf("resume: %q", out)
	}

	// status -w follows through a watch and ends with the deployment:
	// failed, exit 1.
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- runContext(ctx, []string{"--endpoints", h.ep, "--prefix", h.prefix, "deploy", "status", "demo", "-w"},
			strings.NewReader(""), &stdout, &stderr)
	}()
	waitOutput(t, &stdout, "Deployment:")
	h.ok("deploy", "fail", "demo")
	select {
	case code := <-done:
		if code != 1 || !strings.Contains(stderr.String(), "failed") {
			t.Errorf("deploy status -w of a failed deployment: exit %d, stderr %q", code, stderr.String())
		}
	case <-ctx.Done():
		t.Fatal("deploy status -w did not end when the deployment failed")
	}

	var hist []map[string]any
	h.okJSON(&hist, "deploys", "demo")
	if len(hist) != 1 || hist[0]["state"] != "failed" || hist[0]["rev"] != "v2" {
		t.Fatalf("history %v", hist)
	}
	checkFields(t, "deploys -o json", hist[0], "id", "from", "rev", "state", "reason", "by", "created", "updated")
	if by, _ := hist[0]["by"].(string); !strings.Contains(by, "@") {
		t.Errorf("by %q, want user@host", by)
	}
	// No driver runs here: move one instance by hand, as a deployment
	// stopped midway leaves it, for the rollback to move back.
	h.ok("scale", "demo", "v2", "web=1")
	h.ok("scale", "demo", "v1", "web=1")
	out = h.ok("rollback", "demo")
	if !strings.Contains(out, "rolling back demo to v1") {
		t.Errorf("rollback output %q", out)
	}
	text = h.ok("deploys", "demo")
	if !strings.Contains(text, "v2\tv1") && !strings.Contains(text, "reverts") {
		t.Errorf("deploys after rollback:\n%s", text)
	}
}

// waitOutput waits until buf holds want.
func waitOutput(t *testing.T, buf *lockedBuffer, want string) {
	t.Helper()
	deadline := time.NewTimer(testtime.Scaled(20 * time.Second))
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(buf.String(), want) {
		select {
		case <-deadline.C:
			t.Fatalf("output never showed %q: %q", want, buf.String())
		case <-tick.C:
		}
	}
}

// TestProcSetStrategy: the strategy flags of proc set write the process
// type's Update, field by field, and proc list shows it.
func TestProcSetStrategy(t *testing.T) {
	h := newHarness(t)
	deployApp(t, h, "demo")
	h.ok("proc", "set", "demo", "web", "--max-parallel", "3", "--min-healthy", "2s", "--auto-revert")
	h.ok("proc", "set", "demo", "web", "--canary", "1")
	p, err := h.registry().ProcType(testContext(t), "demo", "web")
	if err != nil {
		t.Fatal(err)
	}
	u := p.Update
	if u == nil || u.MaxParallel != 3 || u.MinHealthyTime() != 2*time.Second || !u.AutoRevert || u.Canary != 1 {
		t.Fatalf("update %+v, want max-parallel 3, min-healthy 2s, auto-revert, canary 1", u)
	}
	var procs []map[string]any
	h.okJSON(&procs, "proc", "list", "demo")
	if upd, _ := procs[0]["update"].(map[string]any); upd == nil || upd["max_parallel"] != 3.0 {
		t.Errorf("proc list update %v", procs[0]["update"])
	}
	before := revisionOf(t, h)
	h.fails(2, []string{"healthy deadline", "min healthy"}, "proc", "set", "demo", "web", "--healthy-deadline", "1s")
	if revisionOf(t, h) != before {
		t.Error("a refused strategy was written")
	}
}

// TestEnvRollout: env set --rollout sets the env, registers a copy of
// the running revision (v1-env1) and deploys it; another app is not
// touched.
func TestEnvRollout(t *testing.T) {
	h := newHarness(t)
	deployApp(t, h, "demo")
	deployApp(t, h, "other")
	r := h.registry()
	ctx := testContext(t)
	otherBefore, err := r.Scales(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	out := h.ok("env", "set", "demo", "GREETING=hi", "--rollout", "-o", "json")
	var d map[string]any
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("env set --rollout -o json: %v: %q", err, out)
	}
	if d["rev"] != "v1-env1" {
		t.Errorf("rolled out as %v, want v1-env1", d["rev"])
	}
	env, err := r.Env(ctx, "demo")
	if err != nil || env["GREETING"] != "hi" {
		t.Errorf("env %v (%v)", env, err)
	}
	rv, err := r.Revision(ctx, "demo", "v1-env1")
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := r.Revision(ctx, "demo", "v1")
	if rv.Dir != v1.Dir {
		t.Errorf("v1-env1 dir %q, want v1's %q", rv.Dir, v1.Dir)
	}
	if rv.Release == nil || rv.Release.Env["GREETING"] != "hi" {
		t.Errorf("v1-env1 release %+v, want it released with GREETING=hi", rv.Release)
	}
	if v1.Release == nil || v1.Release.Env["GREETING"] != "" {
		t.Errorf("v1 release %+v changed", v1.Release)
	}
	dep, err := r.Deployment(ctx, "demo")
	if err != nil || dep.Rev != "v1-env1" || dep.State.Terminal() {
		t.Errorf("deployment %+v (%v), want an active one to v1-env1", dep, err)
	}
	otherAfter, _ := r.Scales(ctx, "other")
	if len(otherAfter) != len(otherBefore) || otherAfter[0] != otherBefore[0] {
		t.Errorf("other app's scale changed: %v -> %v", otherBefore, otherAfter)
	}
	if _, err := r.Deployment(ctx, "other"); err == nil {
		t.Error("other app got a deployment")
	}
}
