package main

import (
	"strings"
	"testing"
)

func TestAppCommands(t *testing.T) {
	h := newHarness(t)

	out := h.ok("app", "create", "web", "--repo", "https://example.com/web.git", "--stack", "go")
	if !strings.Contains(out, "created app web") {
		t.Errorf("app create: stdout %q", out)
	}
	var created map[string]any
	h.okJSON(&created, "app", "create", "api")
	checkFields(t, "app create -o json", created, "name", "created")
	if created["name"] != "api" {
		t.Errorf("app create -o json: name %v", created["name"])
	}

	out = h.ok("app", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.HasPrefix(lines[1], "api") ||
		!strings.HasPrefix(lines[2], "web") || !strings.Contains(lines[2], "https://example.com/web.git") {
		t.Errorf("app list: got\n%s", out)
	}
	var list []map[string]any
	h.okJSON(&list, "app", "list")
	if len(list) != 2 {
		t.Fatalf("app list -o json: %d apps, want 2", len(list))
	}
	checkFields(t, "app list -o json", list[1], "name", "repo_url", "stack", "created")

	h.ok("env", "set", "web", "PORT_HINT=80", "MODE=prod")
	h.ok("rev", "register", "web", "v1", "--dir", "/srv/web")
	h.ok("proc", "set", "web", "worker", "--command", "./worker")
	h.ok("scale", "web", "v1", "worker=2")

	var show map[string]any
	h.okJSON(&show, "app", "show", "web")
	checkFields(t, "app show -o json", show, "name", "repo_url", "stack", "created", "env", "revisions", "proc_types", "scale")
	if env, _ := show["env"].(map[string]any); env["MODE"] != "prod" {
		t.Errorf("app show: env %v", show["env"])
	}
	if sc, _ := show["scale"].([]any); len(sc) != 1 {
		t.Errorf("app show: scale %v", show["scale"])
	} else {
		checkFields(t, "app show scale", sc[0].(map[string]any), "rev", "proc", "desired")
	}
	out = h.ok("app", "show", "web")
	for _, want := range []string{"web", "MODE PORT_HINT", "v1", "worker", "v1/worker=2"} {
		if !strings.Contains(out, want) {
			t.Errorf("app show: %q missing in\n%s", want, out)
		}
	}

	t.Run("errors", func(t *testing.T) {
		h := h.sub(t)
		h.ok("app", "create", "web")
		h.fails(1, []string{"web", "exists"}, "app", "create", "web")
		h.fails(1, []string{"nope", "not found"}, "app", "show", "nope")
		h.fails(1, []string{"nope", "not found"}, "app", "delete", "nope")
		for _, bad := range []string{"../x", "Web", strings.Repeat("a", 300), "a/b", "a b", ""} {
			h.fails(2, []string{"invalid"}, "app", "create", bad)
		}
	})

	h.ok("app", "delete", "api")
	var after []map[string]any
	h.okJSON(&after, "app", "list")
	if len(after) != 1 || after[0]["name"] != "web" {
		t.Errorf("after delete: apps %v", after)
	}
}

func TestAppDeleteInUse(t *testing.T) {
	h := newHarness(t)
	h.ok("app", "create", "web")
	h.ok("rev", "register", "web", "v1", "--dir", "/srv/web")
	h.ok("proc", "set", "web", "web", "--command", "./web")
	h.ok("scale", "web", "v1", "web=1")
	runInstances(t, h.registry(), "h1", 1)

	h.fails(1, []string{"web", "in use", "--force"}, "app", "delete", "web")
	h.ok("app", "show", "web")
	h.ok("app", "delete", "web", "--force")
	h.fails(1, []string{"not found"}, "app", "show", "web")
}
