package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// TestStatus (issue 17, item 6: there was no fleet summary): `visor
// status` on a real registry with a host up, one draining, one lost (its
// lease gone, its instance still live), running instances (one with a
// failing health check), a start ticket no host claimed and instances
// waiting for room. The text is compared with testdata/status.golden
// (go test -run TestStatus -update rewrites it), the JSON field by field.
func TestStatus(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	r := h.registry()
	ctx := testContext(t)
	// h3 runs one worker, then its agent dies (the lease goes, the
	// instance record stays): a lost host.
	h.ok("scale", "web", "v1", "worker=1")
	lost := runInstances(t, r, "h3", 1)
	if err := lost.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := r.RegisterHost(ctx, registry.Host{ID: "h1", Capacity: 3}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(testContext(t)) })
	registerHost(t, r, "h2")
	h.ok("host", "drain", "h2")
	h.ok("scale", "web", "v1", "web=2")
	tickets, err := r.Tickets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sick registry.Instance
	for _, tk := range tickets {
		if err := carryOut(ctx, s, tk); err != nil {
			t.Fatal(err)
		}
		sick, err = r.Instance(ctx, tk.Instance)
		if err != nil {
			t.Fatal(err)
		}
	}
	sick.Health = "http check: unhealthy status: status 500"
	if err := s.UpdateInstance(ctx, sick); err != nil {
		t.Fatal(err)
	}
	// h1 has one slot left (h2 drains, h3 is gone): 1 ticket, 2 waiting.
	if res := h.run("scale", "web", "v1", "web=5", "--force"); res.code != 0 {
		t.Fatalf("scale --force: %d %s", res.code, res.stderr)
	}

	got := h.ok("status")
	path := filepath.Join("testdata", "status.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run TestStatus -update writes it)", err)
	}
	if got != string(want) {
		t.Errorf("visor status differs from %s (go test -run TestStatus -update rewrites it):\n%s\ngot:\n%s", path, lineDiff(string(want), got), got)
	}

	var st statusOut
	h.okJSON(&st, "status")
	b, _ := json.Marshal(st)
	if st.Hosts.Up != 1 || st.Hosts.Draining != 1 || st.Hosts.Lost != 1 || len(st.Hosts.Problems) != 2 {
		t.Errorf("status -o json hosts: %s", b)
	}
	c := st.Instances
	if c.Desired != 6 || c.Running != 3 || c.Unhealthy != 1 || c.Starting != 1 {
		t.Errorf("status -o json instances: %+v", c)
	}
	if st.Tickets.Waiting != 1 || len(st.Tickets.Groups) != 1 || st.Tickets.Groups[0].Op != "start" {
		t.Errorf("status -o json tickets: %+v", st.Tickets)
	}
	if len(st.Waiting) != 1 || st.Waiting[0].Waiting != 2 || st.Waiting[0].Reason == "" || st.Waiting[0].Since.IsZero() {
		t.Errorf("status -o json waiting: %+v", st.Waiting)
	}
	// A waiting scale has these keys, in this order; since is when it began to wait.
	var raw struct {
		Waiting []json.RawMessage `json:"waiting"`
	}
	h.okJSON(&raw, "status")
	if len(raw.Waiting) != 1 || !jsonKeysAre(raw.Waiting[0], "app", "rev", "proc", "desired", "admitted", "waiting", "reason", "since") {
		t.Errorf("status -o json waiting: %s", raw.Waiting)
	}
}

// jsonKeysAre reports whether object b has exactly keys, in that order.
func jsonKeysAre(b []byte, keys ...string) bool {
	d := json.NewDecoder(bytes.NewReader(b))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	var got []string
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return false
		}
		got = append(got, tok.(string))
		var v json.RawMessage
		if d.Decode(&v) != nil {
			return false
		}
	}
	return slices.Equal(got, keys)
}
