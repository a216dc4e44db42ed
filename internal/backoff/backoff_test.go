package backoff

import (
	"context"
	"errors"
	"math"
	"testing"
	"testing/synctest"
	"time"
)

func TestPolicyDelay(t *testing.T) {
	const ms = time.Millisecond
	huge := time.Duration(math.MaxInt64)
	cases := []struct {
		name string
		p    Policy
		n    []int
		want []time.Duration
	}{
		{"zero policy uses the defaults", Policy{}, []int{1, 2, 3, 9, 10, 100},
			[]time.Duration{100 * ms, 200 * ms, 400 * ms, 25600 * ms, DefaultMax, DefaultMax}},
		{"doubles up to the cap", Policy{Initial: ms, Max: 20 * ms}, []int{1, 2, 3, 4, 5, 6, 50},
			[]time.Duration{ms, 2 * ms, 4 * ms, 8 * ms, 16 * ms, 20 * ms, 20 * ms}},
		{"attempts below 1 count as the first", Policy{Initial: 5 * ms, Max: time.Second}, []int{0, -3},
			[]time.Duration{5 * ms, 5 * ms}},
		{"a cap below the initial delay is the initial delay", Policy{Initial: time.Second, Max: ms}, []int{1, 2, 30},
			[]time.Duration{time.Second, time.Second, time.Second}},
		{"no overflow near the largest duration", Policy{Initial: time.Second, Max: huge}, []int{1, 34, 35, 64, 1000, math.MaxInt},
			[]time.Duration{time.Second, time.Second << 33, huge, huge, huge, huge}},
		{"negative values mean the defaults", Policy{Initial: -ms, Max: -ms}, []int{1, 20},
			[]time.Duration{DefaultInitial, DefaultMax}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i, n := range tc.n {
				if got := tc.p.Delay(n); got != tc.want[i] {
					t.Errorf("Delay(%d) = %v, want %v", n, got, tc.want[i])
				}
			}
		})
	}
}

// TestJitteredRange checks that every jittered delay lies in
// d·(1-Jitter)..d and that the draws spread over that range.
func TestJitteredRange(t *testing.T) {
	const d = time.Second
	cases := []struct {
		name   string
		jitter float64
		lo     time.Duration // smallest allowed
	}{
		{"none", NoJitter, d},
		{"half", HalfJitter, d / 2},
		{"full", FullJitter, 0},
		{"a fifth", 0.2, d * 4 / 5},
		{"above 1 is full", 7, 0},
		{"below 0 is none", -1, d},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Policy{Jitter: tc.jitter}
			for _, r := range []struct {
				name string
				b    *Backoff
			}{{"global", New(p)}, {"seeded", NewSeeded(p, 1)}} {
				lowest, highest := d, time.Duration(0)
				for range 2000 {
					got := p.Jittered(d, r.b.Rand)
					if got < tc.lo || got > d {
						t.Fatalf("%s: Jittered(%v) = %v, outside %v..%v", r.name, d, got, tc.lo, d)
					}
					lowest, highest = min(lowest, got), max(highest, got)
				}
				// 2000 uniform draws cover the range but for a few
				// percent at each end (a miss has odds below 1e-40).
				span := d - tc.lo
				if span > 0 && (lowest > tc.lo+span/10 || highest < d-span/10) {
					t.Errorf("%s: draws spread only over %v..%v of %v..%v", r.name, lowest, highest, tc.lo, d)
				}
			}
		})
	}
	if got := (Policy{Jitter: FullJitter}).Jittered(0, nil); got != 0 {
		t.Errorf("Jittered(0) = %v, want 0", got)
	}
	if got := (Policy{Jitter: FullJitter}).Jittered(-time.Second, nil); got != -time.Second {
		t.Errorf("Jittered(-1s) = %v, want -1s unchanged", got)
	}
}

func TestSeededRepeats(t *testing.T) {
	p := Policy{Initial: time.Millisecond, Max: time.Second, Jitter: FullJitter}
	a, b, c := NewSeeded(p, 42), NewSeeded(p, 42), NewSeeded(p, 43)
	differ := false
	for i := range 20 {
		da, db, dc := a.Next(), b.Next(), c.Next()
		if da != db {
			t.Fatalf("delay %d: seed 42 gave %v and %v", i+1, da, db)
		}
		differ = differ || da != dc
	}
	if !differ {
		t.Error("seeds 42 and 43 gave the same 20 delays")
	}
}

func TestBackoffCountsAndResets(t *testing.T) {
	var b Backoff // the zero value works: zero policy, global generator
	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		if got := b.Next(); got != want {
			t.Fatalf("delay %d = %v, want %v", i+1, got, want)
		}
		if b.Attempt() != i+1 {
			t.Fatalf("Attempt() = %d after %d delays", b.Attempt(), i+1)
		}
	}
	b.Reset()
	if b.Attempt() != 0 {
		t.Fatalf("Attempt() = %d after Reset", b.Attempt())
	}
	if got := b.Next(); got != 100*time.Millisecond {
		t.Fatalf("first delay after Reset = %v, want 100ms", got)
	}
}

// TestWaitWaitsTheDelay runs in a synctest bubble, where time moves only
// when every goroutine is blocked: Wait must take exactly its delay.
func TestWaitWaitsTheDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Policy{Initial: time.Second, Max: 4 * time.Second})
		for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
			start := time.Now()
			if err := b.Wait(t.Context()); err != nil {
				t.Fatalf("Wait: %v", err)
			}
			if got := time.Since(start); got != want {
				t.Fatalf("Wait took %v, want %v", got, want)
			}
		}
	})
}

func TestWaitEndsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		b := New(Policy{Initial: time.Hour})
		done := make(chan error)
		start := time.Now()
		go func() { done <- b.Wait(ctx) }()
		time.Sleep(time.Minute)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
		}
		if got := time.Since(start); got != time.Minute {
			t.Fatalf("Wait returned after %v, want 1m (when ctx ended)", got)
		}
		if b.Attempt() != 1 {
			t.Fatalf("Attempt() = %d, want 1: a cut-short wait still counts", b.Attempt())
		}
		// An ended context fails at once, even for a zero delay.
		if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("Sleep(ended ctx, 0) = %v", err)
		}
		if err := b.Wait(ctx); !errors.Is(err, context.Canceled) || time.Since(start) != time.Minute {
			t.Fatalf("Wait(ended ctx) = %v after %v", err, time.Since(start))
		}
	})
	if err := Sleep(context.Background(), 0); err != nil {
		t.Fatalf("Sleep(0) = %v", err)
	}
}
