package main

import (
	"strings"
	"testing"
)

func TestTickets(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	h.ok("scale", "web", "v1", "web=2")

	var list []map[string]any
	h.okJSON(&list, "tickets")
	if len(list) != 2 {
		t.Fatalf("tickets -o json: %v", list)
	}
	checkFields(t, "tickets -o json", list[0], "id", "op", "app", "rev", "proc", "instance", "host", "signal",
		"holder", "attempts", "max_attempts", "failed_hosts", "reasons", "created")
	if list[0]["op"] != "start" || list[0]["holder"] != "" || list[0]["id"].(string) >= list[1]["id"].(string) {
		t.Errorf("tickets -o json: %v", list)
	}

	// A host claims one ticket: it shows as the holder and in --host.
	r := h.registry()
	sess := registerHost(t, r, "h1")
	tickets, err := r.Tickets(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Claim(testContext(t), tickets[0]); err != nil {
		t.Fatal(err)
	}
	out := h.ok("tickets")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "TICKET") || !strings.Contains(lines[1], "start") ||
		!strings.Contains(lines[1], "web/v1/web") || !strings.Contains(lines[1], " h1 ") {
		t.Errorf("tickets: got\n%s", out)
	}
	list = nil
	h.okJSON(&list, "tickets", "--host", "h1")
	if len(list) != 1 || list[0]["holder"] != "h1" {
		t.Errorf("tickets --host h1: %v", list)
	}
	list = nil
	h.okJSON(&list, "tickets", "--host", "h2")
	if len(list) != 0 {
		t.Errorf("tickets --host h2: %v", list)
	}
	h.fails(2, []string{"invalid"}, "tickets", "--host", "H/1")
}
