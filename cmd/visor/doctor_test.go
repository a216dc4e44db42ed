package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// Records that do not decode (issue 14 row 6): doctor lists each with its
// kind and exits 1; ps, hosts, tickets, env and scale --wait still work on
// the good records and warn on stderr how many they skipped.
func TestDoctorAndListingsWithBadRecords(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	h.ok("env", "set", "web", "GOOD=1")
	r := h.registry()
	if out := h.ok("doctor"); !strings.Contains(out, "no bad records") {
		t.Fatalf("doctor on a clean registry: %q", out)
	}

	bad := map[string]string{ // relative key -> kind
		"hosts/x":                     "host",
		"instances/web-web-bad":       "instance",
		"tickets/0000000000000000bad": "ticket",
		"apps/web/env/A=B":            "env",
		"services/web.web/x1":         "service",
	}
	vals := map[string]string{
		"hosts/x":                     "garbage",
		"instances/web-web-bad":       "{",
		"tickets/0000000000000000bad": `{"op":"explode"}`,
		"apps/web/env/A=B":            "1",
		"services/web.web/x1":         `{"addr":"198.51.100.9","port":70000,"source":"external"}`,
	}
	ctx := testContext(t)
	for k := range bad {
		if _, err := r.Client().Put(ctx, h.prefix+k, vals[k]); err != nil {
			t.Fatal(err)
		}
	}

	res := h.run("doctor")
	if res.code != 1 || !strings.Contains(res.stderr, "5 bad records") {
		t.Fatalf("doctor: exit %d, stderr %q, want 1 and the count", res.code, res.stderr)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "KEY") {
		t.Fatalf("doctor table:\n%s", res.stdout)
	}
	for k, kind := range bad {
		found := false
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			found = found || (f[0] == h.prefix+k && f[1] == kind)
		}
		if !found {
			t.Errorf("doctor does not list %s as %s:\n%s", k, kind, res.stdout)
		}
	}
	var list []map[string]any
	res = h.run("doctor", "-o", "json")
	if res.code != 1 || !strings.HasPrefix(res.stdout, "[") {
		t.Fatalf("doctor -o json: exit %d stdout %q", res.code, res.stdout)
	}
	if err := json.Unmarshal([]byte(res.stdout), &list); err != nil || len(list) != 5 {
		t.Fatalf("doctor -o json: %v %v", list, err)
	}
	checkFields(t, "doctor -o json", list[0], "key", "kind", "error")

	// Listings go on with the good records and say what they skipped.
	serve(t, h, carryOut)
	warned := func(what string, res result, n int, key string) {
		t.Helper()
		if res.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", what, res.code, res.stderr)
		}
		want := "visor: warning: skipped " + map[int]string{1: "1 record that does", 2: "2 records that do"}[n] + " not decode"
		if !strings.Contains(res.stderr, want) || !strings.Contains(res.stderr, h.prefix+key) || !strings.Contains(res.stderr, "visor doctor") {
			t.Errorf("%s: stderr %q, want %q naming %s and visor doctor", what, res.stderr, want, key)
		}
	}
	res = h.run("scale", "web", "v1", "web=2", "--wait", "--wait-timeout", "60s")
	warned("scale --wait", res, 1, "instances/web-web-bad")
	if !strings.Contains(res.stdout, "web/v1/web 2/2 running") {
		t.Errorf("scale --wait: %q", res.stdout)
	}
	res = h.run("ps")
	warned("ps", res, 1, "instances/web-web-bad")
	if n := strings.Count(res.stdout, " running "); n != 2 {
		t.Errorf("ps lists %d running, want 2:\n%s", n, res.stdout)
	}
	res = h.run("hosts")
	warned("hosts", res, 1, "hosts/x")
	if !strings.Contains(res.stdout, "h1") {
		t.Errorf("hosts: %q", res.stdout)
	}
	res = h.run("tickets")
	warned("tickets", res, 1, "tickets/0000000000000000bad")
	res = h.run("env", "list", "web")
	warned("env list", res, 1, "apps/web/env/A=B")
	if !strings.Contains(res.stdout, "GOOD") || strings.Contains(res.stdout, "A=B") {
		t.Errorf("env list: %q", res.stdout)
	}
}
