package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Defaults applied to the zero values of a Policy.
const (
	DefaultInitial = 100 * time.Millisecond
	DefaultMax     = 30 * time.Second
)

// Jitter fractions for Policy.Jitter.
const (
	// NoJitter keeps every delay as Policy.Delay gives it.
	NoJitter = 0.0
	// HalfJitter draws each delay from the upper half of its range, d/2..d:
	// retries still spread out, and none comes much earlier than planned.
	HalfJitter = 0.5
	// FullJitter draws each delay from 0..d ("full jitter"): the widest
	// spread for writers that collide.
	FullJitter = 1.0
)

// Policy describes an exponential backoff. The n-th delay (n from 1) is
// Initial·2^(n-1), capped at Max, then shortened by a random fraction of
// up to Jitter. The zero value waits 100ms, 200ms, 400ms, ... up to 30s,
// without jitter.
type Policy struct {
	// Initial is the first delay. Zero means DefaultInitial (100ms).
	Initial time.Duration
	// Max caps the delay. Zero means DefaultMax (30s); a Max below Initial
	// means Initial.
	Max time.Duration
	// Jitter, in 0..1, is the largest fraction by which a delay is
	// shortened at random: NoJitter (0), HalfJitter, FullJitter (1).
	// Values outside 0..1 are taken as the nearest bound.
	Jitter float64
}

func (p Policy) bounds() (initial, limit time.Duration) {
	initial, limit = p.Initial, p.Max
	if initial <= 0 {
		initial = DefaultInitial
	}
	if limit <= 0 {
		limit = DefaultMax
	}
	return initial, max(limit, initial)
}

// Delay returns the n-th delay (n from 1; below 1 counts as 1) without
// jitter: Initial·2^(n-1), capped at Max. It never overflows.
func (p Policy) Delay(n int) time.Duration {
	d, limit := p.bounds()
	for i := 1; i < n && d < limit; i++ {
		if d > limit/2 {
			return limit
		}
		d *= 2
	}
	return min(d, limit)
}

// Jittered returns d shortened by a random fraction of up to p.Jitter,
// drawn from r (nil: math/rand/v2's global generator). The result is in
// d·(1-Jitter)..d, and d itself when Jitter is 0 or d is not positive.
func (p Policy) Jittered(d time.Duration, r *rand.Rand) time.Duration {
	j := min(max(p.Jitter, 0), 1)
	if j == 0 || d <= 0 {
		return d
	}
	var u float64
	if r != nil {
		u = r.Float64()
	} else {
		u = rand.Float64()
	}
	return d - time.Duration(float64(d)*j*u)
}

// Backoff counts the attempts of one retry loop and hands out their
// delays. Its zero value follows the zero Policy with the global
// generator. A Backoff is not safe for concurrent use.
type Backoff struct {
	// Policy gives the delays.
	Policy Policy
	// Rand draws the jitter; nil means math/rand/v2's global generator.
	Rand *rand.Rand

	n int // delays handed out since the last Reset
}

// New returns a Backoff for p whose jitter comes from math/rand/v2's
// global generator.
func New(p Policy) *Backoff { return &Backoff{Policy: p} }

// NewSeeded returns a Backoff for p whose jitter comes from a PCG
// generator seeded with seed: two Backoffs with the same seed and policy
// hand out the same delays.
func NewSeeded(p Policy, seed uint64) *Backoff {
	return &Backoff{Policy: p, Rand: Seeded(seed)}
}

// Seeded returns a small deterministic generator (PCG, 16 bytes of state)
// for seed, for a Backoff's Rand or Policy.Jittered.
func Seeded(seed uint64) *rand.Rand {
	// The second word is a fixed odd constant (the golden ratio's bits),
	// so that nearby seeds start far apart in the sequence.
	return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
}

// Next counts one more attempt and returns its jittered delay.
func (b *Backoff) Next() time.Duration {
	b.n++
	return b.Policy.Jittered(b.Policy.Delay(b.n), b.Rand)
}

// Attempt returns the number of delays handed out since the last Reset.
func (b *Backoff) Attempt() int { return b.n }

// Reset starts over: the next delay is the first one again.
func (b *Backoff) Reset() { b.n = 0 }

// Wait waits out the next delay (Next). It returns nil when the delay has
// passed, or ctx.Err() as soon as ctx ends; a delay that was cut short
// still counts as an attempt.
func (b *Backoff) Wait(ctx context.Context) error {
	return Sleep(ctx, b.Next())
}

// Sleep waits d, or until ctx ends. It returns nil when d has passed, or
// ctx.Err() when ctx ended first or had already ended.
func Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil || d <= 0 {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
