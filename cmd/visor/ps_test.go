package main

import (
	"strings"
	"testing"
)

func TestPS(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	h.ok("app", "create", "api")
	h.ok("rev", "register", "api", "v1", "--dir", "/srv/api")
	h.ok("proc", "set", "api", "web", "--command", "./api")

	h.ok("scale", "web", "v1", "web=2")
	r := h.registry()
	runInstances(t, r, "h1", 2)
	h.ok("scale", "api", "v1", "web=1")
	runInstances(t, r, "h2", 1)

	var all []map[string]any
	h.okJSON(&all, "ps")
	if len(all) != 3 {
		t.Fatalf("ps -o json: %d instances, want 3", len(all))
	}
	checkFields(t, "ps -o json", all[0], "id", "app", "rev", "proc", "host", "state", "since", "port", "pid",
		"restarts", "exit_code", "signal", "reason", "ticket", "created")
	if all[0]["app"] != "api" || all[0]["host"] != "h2" || all[0]["state"] != "running" || all[0]["pid"] != 4242.0 {
		t.Errorf("ps -o json first: %v", all[0])
	}

	out := h.ok("ps", "web")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "INSTANCE") {
		t.Fatalf("ps web: got\n%s", out)
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) < 9 || f[1] != "web" || f[4] != "h1" || f[5] != "running" || f[7] != "5000" || f[8] != "4242" {
			t.Errorf("ps web line: %q", l)
		}
	}

	var onHost []map[string]any
	h.okJSON(&onHost, "ps", "--host", "h2")
	if len(onHost) != 1 || onHost[0]["app"] != "api" {
		t.Errorf("ps --host h2: %v", onHost)
	}
	onHost = nil
	h.okJSON(&onHost, "ps", "web", "--host", "h2")
	if len(onHost) != 0 {
		t.Errorf("ps web --host h2: %v", onHost)
	}
	h.fails(1, []string{"nope", "not found"}, "ps", "nope")
}
