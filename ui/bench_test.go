package ui

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// benchFleet is 1000 instances of 10 apps on 10 hosts, most running, and
// a history with an hour of samples for each app and host.
func benchFleet() ([]registry.Host, []registry.Instance, []registry.ScaleEntry, *History) {
	var hosts []registry.Host
	for i := range 10 {
		hosts = append(hosts, registry.Host{ID: fmt.Sprintf("host-%02d", i), Version: "v1", Capacity: 200,
			Load: registry.HostLoad{Load1: 0.5, MemUsedPercent: 40}})
	}
	states := []registry.InstanceState{registry.InstanceRunning, registry.InstanceRunning, registry.InstanceRunning,
		registry.InstanceBackoff, registry.InstanceStarting}
	var insts []registry.Instance
	var entries []registry.ScaleEntry
	now := time.Now()
	for a := range 10 {
		app := fmt.Sprintf("app-%02d", a)
		entries = append(entries, registry.ScaleEntry{App: app, Rev: "v1", Proc: "web", Desired: 100})
		for i := range 100 {
			insts = append(insts, registry.Instance{ID: fmt.Sprintf("%s-web-%08x", app, i), App: app, Rev: "v1", Proc: "web",
				Host: hosts[i%10].ID, Port: 20000 + i, PID: 1000 + i, State: states[i%len(states)], Since: now.Add(-time.Minute),
				Restarts: map[string]int{"fail": i % 3}, Created: now.Add(-time.Hour)})
		}
	}
	h := NewHistory(HistoryConfig{})
	h.list(insts)
	h.setHosts(hosts)
	for i := range 360 {
		h.sample(now.Add(time.Duration(i-359) * 10 * time.Second))
	}
	return hosts, insts, entries, h
}

// BenchmarkOverview1000 renders the fleet overview of 1000 instances
// (counts, hosts, apps and their charts; the registry read is not in it)
// against a baseline: the JSON encoding of the same instance list, as the
// agent's API would send it. BENCHMARKS.md gives the ratio.
func BenchmarkOverview1000(b *testing.B) {
	hosts, insts, entries, hist := benchFleet()
	b.Run("json-baseline", func(b *testing.B) {
		for b.Loop() {
			if err := json.NewEncoder(io.Discard).Encode(insts); err != nil {
				b.Fatal(err)
			}
		}
	})
	h := New(Config{History: hist, Host: "host-00"})
	req := httptest.NewRequest("GET", "/ui/", nil)
	b.Run("overview", func(b *testing.B) {
		for b.Loop() {
			d := fleetData(hosts, insts, 10, entries)
			d.Pics = h.overviewPictures(d.Scales)
			w := httptest.NewRecorder()
			h.render(w, req, 200, "overview", "Fleet", d)
			if w.Code != 200 {
				b.Fatalf("render: %d", w.Code)
			}
		}
	})
	b.Run("app-page-listing-1000", func(b *testing.B) {
		for b.Loop() {
			d := appData{App: registry.App{Name: "all"}, Instances: append([]registry.Instance(nil), insts...),
				Scales: scaleRows(entries, insts), Pics: h.appPictures("app-00")}
			sortInstances(d.Instances)
			w := httptest.NewRecorder()
			h.render(w, req, 200, "app", "App all", d)
			if w.Code != 200 {
				b.Fatalf("render: %d", w.Code)
			}
		}
	})
}
