package main

import (
	"strings"
	"testing"
	"time"
)

func TestDrainCommands(t *testing.T) {
	h := newHarness(t)
	r := h.registry()
	registerHost(t, r, "h1")

	h.fails(1, []string{"not a live host", "nope"}, "drain", "nope")
	h.fails(1, []string{"no other live host"}, "drain", "h1")
	h.fails(2, []string{"HOST"}, "drain")
	h.fails(2, []string{"invalid", "host"}, "drain", "Bad/Host")

	registerHost(t, r, "h2")
	out := h.ok("drain", "h1", "--deadline", "2m")
	if !strings.Contains(out, "draining h1") || !strings.Contains(out, "deadline") {
		t.Errorf("drain output %q", out)
	}
	var hosts []map[string]any
	h.okJSON(&hosts, "hosts")
	for _, ho := range hosts {
		if (ho["id"] == "h1") != (ho["draining"] == true) {
			t.Errorf("hosts -o json: %v", ho)
		}
	}
	h.ok("undrain", "h1")
	h.fails(1, []string{"not draining"}, "undrain", "h1")

	// -o json: deadline is null without one, a time with one.
	var d map[string]any
	h.okJSON(&d, "drain", "h1")
	checkFields(t, "drain -o json", d, "host", "since", "deadline")
	if d["host"] != "h1" || d["deadline"] != nil {
		t.Errorf("drain -o json without a deadline: %v", d)
	}
	h.okJSON(&d, "drain", "h1", "--deadline", "2m")
	checkFields(t, "drain --deadline -o json", d, "host", "since", "deadline")
	dl, _ := d["deadline"].(string)
	if at, err := time.Parse(time.RFC3339, dl); err != nil || at.Year() < 2000 {
		t.Errorf("drain --deadline 2m -o json: deadline %v", d["deadline"])
	}
	h.ok("undrain", "h1")
}
