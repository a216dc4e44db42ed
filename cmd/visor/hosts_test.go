package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

func TestHosts(t *testing.T) {
	h := newHarness(t)
	var none []map[string]any
	h.okJSON(&none, "hosts")
	if none == nil || len(none) != 0 {
		t.Errorf("hosts -o json with no hosts: %v, want []", none)
	}

	r := h.registry()
	ctx := testContext(t)
	sess, err := r.RegisterHost(ctx, registry.Host{ID: "h1", Addr: "10.0.0.1:7070", Labels: map[string]string{"zone": "a"},
		Capacity: 50, Version: "1.2.3"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(context.Background()) })

	var hosts []map[string]any
	h.okJSON(&hosts, "hosts")
	if len(hosts) != 1 {
		t.Fatalf("hosts -o json: %v", hosts)
	}
	checkFields(t, "hosts -o json", hosts[0], "id", "addr", "labels", "capacity", "version", "started", "updated", "load", "draining")
	checkFields(t, "hosts load", hosts[0]["load"].(map[string]any), "load1", "mem_used_percent", "instances")
	out := h.ok("hosts")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "HOST") ||
		!strings.Contains(lines[1], "h1") || !strings.Contains(lines[1], "10.0.0.1:7070") || !strings.Contains(lines[1], "0/50") ||
		!strings.Contains(lines[1], "zone=a") || !strings.Contains(lines[1], "up") {
		t.Errorf("hosts: got\n%s", out)
	}
}

func TestHostsWatch(t *testing.T) {
	h := newHarness(t)
	r := h.registry()
	registerHost(t, r, "h1")

	t.Run("table", func(t *testing.T) {
		f := h.follow("hosts", "-w")
		f.waitOutput("h1.local:7070")
		sess := registerHost(t, r, "h2")
		f.waitOutput(" joined h2 addr=h2.local:7070\n")
		if err := sess.Close(testContext(t)); err != nil {
			t.Fatal(err)
		}
		f.waitOutput(" left h2\n")
		if code := f.stop(); code != 0 {
			t.Errorf("hosts -w: exit %d, stderr %q", code, f.stderr.String())
		}
	})
	t.Run("json", func(t *testing.T) {
		f := h.follow("hosts", "-w", "-o", "json")
		f.waitOutput(`"event":"present"`)
		sess := registerHost(t, r, "h3")
		f.waitOutput(`"event":"joined"`)
		if err := sess.Close(testContext(t)); err != nil {
			t.Fatal(err)
		}
		f.waitOutput(`"event":"left"`)
		if code := f.stop(); code != 0 {
			t.Errorf("hosts -w -o json: exit %d, stderr %q", code, f.stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(f.stdout.String()), "\n")
		if len(lines) != 3 {
			t.Fatalf("hosts -w -o json: want 3 lines, got\n%s", f.stdout.String())
		}
		for i, want := range []string{"present h1", "joined h3", "left h3"} {
			var ev map[string]any
			if err := json.Unmarshal([]byte(lines[i]), &ev); err != nil {
				t.Fatalf("line %q: %v", lines[i], err)
			}
			if got := ev["event"].(string) + " " + ev["host_id"].(string); got != want {
				t.Errorf("line %d: %s, want %s", i, got, want)
			}
			if _, ok := ev["revision"]; !ok {
				t.Errorf("line %d: no revision: %v", i, ev)
			}
		}
	})
}
