package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// TestHealthDeadline: (period + timeout) × threshold + 10 s, with the
// supervisor's defaults for zero fields; none without a check.
func TestHealthDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    *registry.HealthCheck
		want time.Duration
	}{
		{"no check", nil, 0},
		{"defaults", &registry.HealthCheck{Type: registry.CheckTCP}, 55 * time.Second},
		{"set", &registry.HealthCheck{Type: registry.CheckTCP, Period: registry.Duration(time.Second),
			Timeout: registry.Duration(time.Second), FailureThreshold: 2}, 14 * time.Second},
		{"short period caps the default timeout", &registry.HealthCheck{Type: registry.CheckHTTP, Period: registry.Duration(2 * time.Second)}, 22 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := healthDeadline(registry.ProcType{Health: tc.h}); got != tc.want {
				t.Fatalf("healthDeadline = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestHealthOverdue: a starting instance with a failing check fails the
// wait once past its deadline, not before (next says when), not while
// its check passes, and not when its process type has what it wants.
func TestHealthOverdue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := &scaleWaiter{app: "a", rev: "v1", want: []scaleArg{{proc: "web", n: 1}},
		state: map[string]registry.InstanceState{}, procOf: map[string]string{},
		healthDeadline: map[string]time.Duration{"web": 14 * time.Second},
		starting:       map[string]time.Time{}, health: map[string]string{}}
	inst := registry.Instance{ID: "a-web-1", App: "a", Rev: "v1", Proc: "web", State: registry.InstanceStarting, Since: t0}
	w.noteHealth(inst, t0)
	w.state[inst.ID], w.procOf[inst.ID] = inst.State, inst.Proc
	if fail, next := w.healthOverdue(t0.Add(time.Hour)); fail != nil || !next.IsZero() {
		t.Fatalf("check not failing: %v, next %v", fail, next)
	}
	inst.Health = "tcp check: refused"
	w.noteHealth(inst, t0.Add(2*time.Second))
	if fail, next := w.healthOverdue(t0.Add(13 * time.Second)); fail != nil || !next.Equal(t0.Add(14*time.Second)) {
		t.Fatalf("before the deadline: %v, next %v", fail, next)
	}
	fail, _ := w.healthOverdue(t0.Add(14 * time.Second))
	if !errors.Is(fail, errWaitFailed) || !strings.Contains(fail.Error(), "instance a-web-1 has been starting for 14s") || !strings.Contains(fail.Error(), "tcp check: refused") {
		t.Fatalf("at the deadline: %v", fail)
	}
	w.want[0].n = 0 // a scale down: the instance is not needed
	if fail, _ := w.healthOverdue(t0.Add(time.Hour)); fail != nil {
		t.Fatalf("scale to 0: %v", fail)
	}
}
