package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestEvents(t *testing.T) {
	h := newHarness(t)
	r := h.registry()
	ctx := testContext(t)
	rev0, err := r.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	since := strconv.FormatInt(rev0+1, 10)
	start := time.Now().Add(-time.Second)

	setupWeb(h)
	h.ok("env", "set", "web", "A=1")
	h.ok("scale", "web", "v1", "web=1")
	runInstances(t, r, "h1", 1)
	// A value written by hand that does not decode; events go on past it.
	if _, err := h.etcd.Client(t).Put(ctx, h.prefix+"apps/broken", "{not json"); err != nil {
		t.Fatal(err)
	}
	h.ok("app", "create", "api")

	out := h.ok("events", "--since", since, "-o", "json")
	var types []string
	var sawBad bool
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("events -o json line %q: %v", line, err)
		}
		for k := range ev {
			if !contains([]string{"revision", "type", "key", "app", "rev", "proc", "ticket", "instance", "host", "state", "error", "time"}, k) {
				t.Errorf("events -o json: unexpected field %q in %s", k, line)
			}
		}
		if ev["error"] != nil {
			sawBad = ev["app"] == "broken" && strings.Contains(ev["key"].(string), "apps/broken")
			continue
		}
		typ := ev["type"].(string)
		// Events carry the time their record gives; a history read has
		// none for changes whose record holds no time of them.
		wantTime := map[string]bool{"app_changed": true, "rev_changed": true, "ticket_created": true,
			"instance_changed": true, "host_joined": true}[typ]
		if ts, ok := ev["time"].(string); ok != wantTime {
			t.Errorf("events -o json: %s has time %v, want one: %v", typ, ev["time"], wantTime)
		} else if ok {
			when, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil || when.Before(start) || when.After(time.Now().Add(time.Second)) {
				t.Errorf("events -o json: %s at %q (%v), not during the test", typ, ts, err)
			}
		}
		if len(types) == 0 || types[len(types)-1] != typ {
			types = append(types, typ)
		}
	}
	// Scale writes the start ticket with its pending instance (and, as the
	// first scale of v1, releases it); the agent's
	// claim, start and completion follow (consecutive repeats collapsed).
	want := []string{"app_changed", "rev_changed", "proc_changed", "env_changed", "scale_changed", "rev_changed", "ticket_created",
		"instance_changed", "host_joined", "ticket_claimed", "instance_changed", "ticket_done", "instance_changed", "app_changed"}
	if strings.Join(types, " ") != strings.Join(want, " ") {
		t.Errorf("event types:\n got %v\nwant %v", types, want)
	}
	if !sawBad {
		t.Errorf("no error event for the undecodable apps/broken in\n%s", out)
	}
	// The last event printed is the app created last: events stops at the
	// revision current when it started.
	if !strings.HasSuffix(strings.TrimSpace(out), `"app":"api"}`) {
		t.Errorf("events does not end with the last change:\n%s", out)
	}

	table := h.ok("events", "--since", since)
	if !strings.Contains(table, " app_changed app=web\n") || !strings.Contains(table, " instance_changed app=web rev=v1 proc=web") {
		t.Errorf("events table:\n%s", table)
	}

	// From a revision after everything: nothing, and a clean exit.
	cur, err := r.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if out := h.ok("events", "--since", strconv.FormatInt(cur+1, 10)); out != "" {
		t.Errorf("events past the end: %q", out)
	}
}

func TestEventsFollow(t *testing.T) {
	h := newHarness(t)
	r := h.registry()
	rev0, err := r.CurrentRevision(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	h.ok("app", "create", "web")
	// Resume from before the first change, then follow new ones.
	f := h.follow("events", "-f", "--since", strconv.FormatInt(rev0+1, 10))
	f.waitOutput(" app_changed app=web\n")
	h.ok("app", "create", "api")
	f.waitOutput(" app_changed app=api\n")
	h.ok("app", "delete", "api")
	f.waitOutput(" app_deleted app=api\n")
	// A live delete has no time in its record: it gets the time it arrived.
	for _, line := range strings.Split(f.stdout.String(), "\n") {
		if strings.HasSuffix(line, " app_deleted app=api") {
			ts, _, _ := strings.Cut(line, " ")
			if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
				t.Errorf("live app_deleted event without a time: %q", line)
			}
		}
	}
	if code := f.stop(); code != 0 {
		t.Errorf("events -f: exit %d, stderr %q", code, f.stderr.String())
	}
}

// TestEventTimeOfSameStateWrite: an instance written in the same state
// (its health check started failing) keeps its old Since, which does not
// date that change: from history the event has no time rather than a
// wrong one.
func TestEventTimeOfSameStateWrite(t *testing.T) {
	h := newHarness(t)
	r := h.registry()
	ctx := testContext(t)
	setupWeb(h)
	h.ok("scale", "web", "v1", "web=1")
	sess := runInstances(t, r, "h1", 1)
	insts, err := r.AppInstances(ctx, "web")
	if err != nil || len(insts) != 1 {
		t.Fatalf("instances: %v, %v", insts, err)
	}
	rev, err := r.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in := insts[0]
	in.Health = "tcp check: refused"
	if err := sess.UpdateInstance(ctx, in); err != nil {
		t.Fatal(err)
	}
	out := h.ok("events", "--since", strconv.FormatInt(rev+1, 10), "-o", "json")
	var ev map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &ev); err != nil {
		t.Fatalf("events: %v\n%s", err, out)
	}
	if ev["type"] != "instance_changed" || ev["state"] != "running" || ev["time"] != nil {
		t.Fatalf("same-state write: %v, want instance_changed running without a time", ev)
	}
}
