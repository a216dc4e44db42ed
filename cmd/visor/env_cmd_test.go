package main

import (
	"strings"
	"testing"
)

func TestEnvCommands(t *testing.T) {
	h := newHarness(t)
	h.ok("app", "create", "web")

	out := h.ok("env", "set", "web", "DATABASE_URL=postgres://db/web?x=1", "MODE=prod", "EMPTY=")
	if !strings.Contains(out, "set DATABASE_URL EMPTY MODE on app web") {
		t.Errorf("env set: stdout %q", out)
	}
	var vars map[string]string
	h.okJSON(&vars, "env", "list", "web")
	if len(vars) != 3 || vars["DATABASE_URL"] != "postgres://db/web?x=1" || vars["MODE"] != "prod" || vars["EMPTY"] != "" {
		t.Errorf("env list -o json: %v", vars)
	}
	out = h.ok("env", "list", "web")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 4 || !strings.HasPrefix(lines[0], "KEY") ||
		!strings.HasPrefix(lines[1], "DATABASE_URL") || !strings.HasPrefix(lines[3], "MODE") {
		t.Errorf("env list: got\n%s", out)
	}

	h.ok("env", "unset", "web", "MODE", "EMPTY")
	vars = nil
	h.okJSON(&vars, "env", "list", "web")
	if len(vars) != 1 || vars["DATABASE_URL"] == "" {
		t.Errorf("after unset: %v", vars)
	}

	h.fails(1, []string{"nope", "not found"}, "env", "set", "nope", "A=1")
	h.fails(1, []string{"nope", "not found"}, "env", "list", "nope")
	h.fails(2, []string{"invalid", "1BAD"}, "env", "set", "web", "1BAD=x")
	h.fails(2, []string{"invalid", "A-B"}, "env", "set", "web", "OK=1", "A-B=x")
	// Nothing of a rejected set is written.
	vars = nil
	h.okJSON(&vars, "env", "list", "web")
	if _, ok := vars["OK"]; ok || len(vars) != 1 {
		t.Errorf("after rejected set: %v", vars)
	}
}
