package agent

import (
	"testing"

	"github.com/visorhq/visor/registry"
)

// TestEligible: which tickets host h1 offers to its pipeline, draining or
// not (a pure decision: no etcd).
func TestEligible(t *testing.T) {
	start := registry.Ticket{ID: "t", Op: registry.TicketStart}
	with := func(t registry.Ticket, mod func(*registry.Ticket)) registry.Ticket { mod(&t); return t }
	for _, tc := range []struct {
		name     string
		t        registry.Ticket
		draining bool
		want     bool
	}{
		{"untargeted start", start, false, true},
		{"start while draining", start, true, false},
		{"start targeted here while draining", with(start, func(t *registry.Ticket) { t.Host = "h1" }), true, false},
		{"stop while draining", registry.Ticket{ID: "t", Op: registry.TicketStop, Host: "h1"}, true, true},
		{"restart while draining", registry.Ticket{ID: "t", Op: registry.TicketRestart, Host: "h1"}, true, true},
		{"signal while draining", registry.Ticket{ID: "t", Op: registry.TicketSignal, Host: "h1"}, true, true},
		{"claimed by another host", with(start, func(t *registry.Ticket) { t.Holder = "h2" }), false, false},
		{"claimed here already", with(start, func(t *registry.Ticket) { t.Holder = "h1" }), false, false},
		{"targeted here", with(start, func(t *registry.Ticket) { t.Host = "h1" }), false, true},
		{"targeted at another host", with(start, func(t *registry.Ticket) { t.Host = "h2" }), false, false},
		{"failed here before", with(start, func(t *registry.Ticket) { t.FailedHosts = []string{"h2", "h1"} }), false, false},
		{"failed elsewhere before", with(start, func(t *registry.Ticket) { t.FailedHosts = []string{"h2"} }), false, true},
		{"failed here but targeted here", with(start, func(t *registry.Ticket) { t.Host = "h1"; t.FailedHosts = []string{"h1"} }), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := eligible(tc.t, "h1", tc.draining); got != tc.want {
				t.Errorf("eligible(%+v, h1, draining=%v) = %v, want %v", tc.t, tc.draining, got, tc.want)
			}
		})
	}
}
