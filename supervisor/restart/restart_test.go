package restart

import (
	"errors"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/backoff"
)

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		p    Policy
		ok   bool
	}{
		{"zero", Policy{}, true},
		{"on-failure", Policy{Mode: ModeOnFailure, MaxRestarts: 3}, true},
		{"never", Policy{Mode: ModeNever}, true},
		{"bad mode", Policy{Mode: "sometimes"}, false},
		{"negative initial", Policy{InitialDelay: -time.Second}, false},
		{"negative max", Policy{MaxDelay: -time.Second}, false},
		{"negative reset", Policy{ResetAfter: -time.Second}, false},
		{"jitter above one", Policy{Jitter: 1.5}, false},
		{"negative jitter", Policy{Jitter: -0.1}, false},
		{"negative restarts", Policy{MaxRestarts: -1}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Validate() = %v, want ErrInvalidPolicy", err)
			}
		})
	}
}

func TestNextModes(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name    string
		mode    string
		exit    Exit
		restart bool
		reason  string
	}{
		{"always clean", ModeAlways, Exit{}, true, ReasonFail},
		{"always crash", "", Exit{Code: 2}, true, ReasonFail},
		{"on-failure clean", ModeOnFailure, Exit{}, false, ReasonFail},
		{"on-failure code", ModeOnFailure, Exit{Code: 1}, true, ReasonFail},
		{"on-failure signal", ModeOnFailure, Exit{Signaled: true}, true, ReasonFail},
		{"on-failure oom", ModeOnFailure, Exit{Signaled: true, OOM: true}, true, ReasonOOM},
		{"on-failure health", ModeOnFailure, Exit{Signaled: true, Health: true}, true, ReasonHealth},
		{"on-failure unknown", ModeOnFailure, Exit{Unknown: true}, true, ReasonFail},
		{"never crash", ModeNever, Exit{Code: 3}, false, ReasonFail},
		{"never oom", ModeNever, Exit{OOM: true}, false, ReasonOOM},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(Policy{Mode: tc.mode}, backoff.Seeded(1))
			d := tr.Next(tc.exit, t0, t0.Add(time.Second))
			if d.Restart != tc.restart || d.Reason != tc.reason || d.Failed {
				t.Fatalf("Next() = %+v, want restart=%v reason=%q", d, tc.restart, tc.reason)
			}
		})
	}
}

// TestBackoffGrowsCapsResets drives a crash loop with an injected clock: the
// delay doubles, stops at MaxDelay, and a stable run resets it.
func TestBackoffGrowsCapsResets(t *testing.T) {
	t.Parallel()
	p := Policy{InitialDelay: 100 * time.Millisecond, MaxDelay: time.Second, Jitter: 0.5, ResetAfter: 5 * time.Second}
	tr := NewTracker(p, backoff.Seeded(7))
	now := time.Unix(1000, 0)
	want := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, base := range want {
		base *= time.Millisecond
		started := now
		now = now.Add(50 * time.Millisecond) // crash quickly
		d := tr.Next(Exit{Code: 1}, started, now)
		if !d.Restart || d.Attempt != i+1 {
			t.Fatalf("restart %d: %+v", i, d)
		}
		if d.Delay > base || d.Delay < base/2 {
			t.Fatalf("restart %d: delay %v outside [%v, %v]", i, d.Delay, base/2, base)
		}
		now = now.Add(d.Delay)
	}
	// A run longer than ResetAfter starts over at InitialDelay.
	started := now
	now = now.Add(6 * time.Second)
	d := tr.Next(Exit{Code: 1}, started, now)
	if d.Attempt != 1 || d.Delay > 100*time.Millisecond {
		t.Fatalf("after stable run: %+v, want attempt 1 and delay <= 100ms", d)
	}
}

func TestMaxRestarts(t *testing.T) {
	t.Parallel()
	tr := NewTracker(Policy{MaxRestarts: 2, NoBackoff: true}, nil)
	now := time.Unix(1000, 0)
	for i := range 2 {
		if d := tr.Next(Exit{Code: 1}, now, now.Add(time.Millisecond)); !d.Restart || d.Delay != 0 {
			t.Fatalf("restart %d: %+v", i, d)
		}
	}
	d := tr.Next(Exit{Code: 1}, now, now.Add(time.Millisecond))
	if d.Restart || !d.Failed {
		t.Fatalf("third exit: %+v, want failed", d)
	}
	// A stable run gives the budget back.
	d = tr.Next(Exit{Code: 1}, now, now.Add(time.Minute))
	if !d.Restart || d.Attempt != 1 {
		t.Fatalf("after stable run: %+v", d)
	}
	tr.Reset()
	if tr.Attempt() != 0 {
		t.Fatalf("Attempt() = %d after Reset", tr.Attempt())
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	p := Policy{}.WithDefaults()
	if p.Mode != ModeAlways || p.InitialDelay != DefaultInitialDelay || p.MaxDelay != DefaultMaxDelay ||
		p.Jitter != DefaultJitter || p.ResetAfter != DefaultResetAfter {
		t.Fatalf("WithDefaults() = %+v", p)
	}
	// A cap below the initial delay is raised to it.
	if p := (Policy{InitialDelay: time.Minute}).WithDefaults(); p.MaxDelay != time.Minute {
		t.Fatalf("MaxDelay = %v, want 1m", p.MaxDelay)
	}
}

// TestJitterSeeded: trackers drawing from generators of the same seed
// choose the same delays (what makes a crash loop replayable in tests),
// and the jitter does shorten them within Jitter of the base delay.
func TestJitterSeeded(t *testing.T) {
	t.Parallel()
	p := Policy{InitialDelay: time.Second, MaxDelay: time.Second, Jitter: 0.5}
	a, b := NewTracker(p, backoff.Seeded(42)), NewTracker(p, backoff.Seeded(42))
	other := NewTracker(p, backoff.Seeded(43))
	now := time.Unix(1000, 0)
	shortened, differs := false, false
	for i := range 20 {
		da := a.Next(Exit{Code: 1}, now, now)
		db := b.Next(Exit{Code: 1}, now, now)
		do := other.Next(Exit{Code: 1}, now, now)
		if da.Delay != db.Delay {
			t.Fatalf("restart %d: delays %v and %v from the same seed", i, da.Delay, db.Delay)
		}
		if da.Delay > time.Second || da.Delay < time.Second/2 {
			t.Fatalf("restart %d: delay %v outside [500ms, 1s]", i, da.Delay)
		}
		shortened = shortened || da.Delay < time.Second
		differs = differs || da.Delay != do.Delay
	}
	if !shortened || !differs {
		t.Fatalf("jitter unused: shortened %v, differs from another seed %v", shortened, differs)
	}
}
