package main

import (
	"strings"
	"testing"
)

// TestRevReleaseCommands: rev show / rev list say released or draft with
// the release's process types and env keys (values only with --env),
// proc set and env set note that they reach the next release, rev
// register --from copies the source, and doctor names a draft revision
// with live instances.
func TestRevReleaseCommands(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	h.ok("env", "set", "web", "SECRET=hunter2", "MODE=a")

	out := h.ok("rev", "show", "web", "v1")
	if !strings.Contains(out, "state:") || !strings.Contains(out, "draft") || strings.Contains(out, "process types:") {
		t.Errorf("rev show of a draft:\n%s", out)
	}
	// No released revision yet: proc set says nothing more.
	if res := h.run("proc", "set", "web", "web", "--command", "./web --v1"); res.code != 0 || strings.Contains(res.stderr, "note:") {
		t.Errorf("proc set before any release: exit %d stderr %q", res.code, res.stderr)
	}

	h.ok("scale", "web", "v1", "web=1")
	out = h.ok("rev", "show", "web", "v1")
	for _, want := range []string{"revision web/v1", "dir /srv/web", "released", "web", "./web --v1", "worker", "./worker", "MODE SECRET"} {
		if !strings.Contains(out, want) {
			t.Errorf("rev show of a released revision lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("rev show prints an env value without --env:\n%s", out)
	}
	if out = h.ok("rev", "show", "web", "v1", "--env"); !strings.Contains(out, "SECRET=hunter2") {
		t.Errorf("rev show --env:\n%s", out)
	}
	var show map[string]any
	h.okJSON(&show, "rev", "show", "web", "v1")
	checkFields(t, "rev show -o json", show, "app", "name", "dir", "created", "state", "released", "procs", "env_keys")
	if show["state"] != "released" || show["procs"].(map[string]any)["web"] != "./web --v1" {
		t.Errorf("rev show -o json = %v", show)
	}
	show = nil
	h.okJSON(&show, "rev", "show", "web", "v1", "--env")
	if show["env"].(map[string]any)["SECRET"] != "hunter2" {
		t.Errorf("rev show --env -o json = %v", show)
	}

	// The app's changes reach the next release, and say so.
	res := h.run("proc", "set", "web", "web", "--command", "./web --v2")
	if res.code != 0 || !strings.Contains(res.stderr, "applies to the next release") || !strings.Contains(res.stderr, "released revision v1 keeps its own") {
		t.Errorf("proc set after a release: exit %d stderr %q", res.code, res.stderr)
	}
	res = h.run("env", "set", "web", "MODE=b")
	if res.code != 0 || !strings.Contains(res.stderr, "applies to the next release") {
		t.Errorf("env set after a release: exit %d stderr %q", res.code, res.stderr)
	}
	if out = h.ok("rev", "show", "web", "v1"); !strings.Contains(out, "./web --v1") || strings.Contains(out, "./web --v2") {
		t.Errorf("v1 changed with the app's proc type:\n%s", out)
	}
	out = h.ok("rev", "register", "web", "v2", "--from", "v1")
	if !strings.Contains(out, "registered revision web/v2") {
		t.Errorf("rev register --from: %q", out)
	}
	h.fails(2, []string{"--from"}, "rev", "register", "web", "v3", "--from", "v1", "--dir", "/srv/x")
	h.fails(1, []string{"nope", "not found"}, "rev", "register", "web", "v3", "--from", "nope")
	h.ok("scale", "web", "v2", "web=1")
	if out = h.ok("rev", "show", "web", "v2", "--env"); !strings.Contains(out, "./web --v2") || !strings.Contains(out, "MODE=b") || !strings.Contains(out, "dir /srv/web") {
		t.Errorf("v2:\n%s", out)
	}
	out = h.ok("rev", "list", "web")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "STATE") || !strings.Contains(lines[1], "released") || !strings.Contains(lines[1], "web,worker") {
		t.Errorf("rev list:\n%s", out)
	}

	// A process type added after v1's release: v1 cannot scale it.
	h.ok("proc", "set", "web", "clock", "--command", "./clock")
	h.fails(1, []string{"revision v1 of app web has no process type clock", "released before clock was added"}, "scale", "web", "v1", "clock=1")

	// A revision record of an older Visor, with a live instance.
	r := h.registry()
	ctx := testContext(t)
	if _, err := r.Client().Put(ctx, h.prefix+"apps/web/revs/v0", `{"dir":"/srv/web","created":"2026-01-02T03:04:05Z"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Client().Put(ctx, h.prefix+"apps/web/scale/v0/web", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rescale(ctx, "web", "v0", "web"); err != nil {
		t.Fatal(err)
	}
	res = h.run("doctor")
	if res.code != 0 || !strings.Contains(res.stderr, "unreleased revisions with live instances") || !strings.Contains(res.stderr, "web/v0 (1 live)") ||
		strings.Contains(res.stderr, "web/v1") {
		t.Errorf("doctor: exit %d stderr %q", res.code, res.stderr)
	}
	if out = h.ok("rev", "list", "web"); !strings.Contains(out, "draft") {
		t.Errorf("rev list with the old revision:\n%s", out)
	}
}
