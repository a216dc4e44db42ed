package main

import (
	"strings"
	"testing"
)

func TestRevCommands(t *testing.T) {
	h := newHarness(t)
	h.ok("app", "create", "web")
	sum := strings.Repeat("ab", 32)

	var rev map[string]any
	h.okJSON(&rev, "rev", "register", "web", "v1", "--artifact", "https://example.com/web-v1.tar.gz", "--sha256", sum)
	checkFields(t, "rev register -o json", rev, "app", "name", "artifact_url", "sha256", "created", "state")
	out := h.ok("rev", "register", "web", "v2", "--dir", "/srv/web/v2")
	if !strings.Contains(out, "registered revision web/v2") {
		t.Errorf("rev register: stdout %q", out)
	}

	out = h.ok("rev", "list", "web")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "v1") || !strings.Contains(lines[1], "https://example.com/web-v1.tar.gz") ||
		!strings.Contains(lines[1], sum[:12]) || !strings.HasPrefix(lines[2], "v2") || !strings.Contains(lines[2], "dir /srv/web/v2") {
		t.Errorf("rev list: got\n%s", out)
	}
	var list []map[string]any
	h.okJSON(&list, "rev", "list", "web")
	if len(list) != 2 {
		t.Fatalf("rev list -o json: %v", list)
	}
	checkFields(t, "rev list -o json dir", list[1], "app", "name", "dir", "created", "state")

	h.fails(1, []string{"v1", "exists"}, "rev", "register", "web", "v1", "--dir", "/srv/x")
	h.fails(1, []string{"nope", "not found"}, "rev", "register", "nope", "v1", "--dir", "/srv/x")
	h.fails(2, []string{"invalid", "sha256"}, "rev", "register", "web", "v3", "--artifact", "file:///tmp/a.tgz", "--sha256", "xyz")
	h.fails(2, []string{"invalid", "V3"}, "rev", "register", "web", "V3", "--dir", "/srv/x")
	h.fails(1, []string{"nope", "not found"}, "rev", "list", "nope")

	h.ok("rev", "delete", "web", "v1")
	h.fails(1, []string{"v1", "not found"}, "rev", "delete", "web", "v1")
	list = nil
	h.okJSON(&list, "rev", "list", "web")
	if len(list) != 1 || list[0]["name"] != "v2" {
		t.Errorf("after delete: %v", list)
	}
}
