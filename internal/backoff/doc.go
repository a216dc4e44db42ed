// Package backoff is Visor's one retry delay: exponential growth from an
// initial delay, doubling up to a cap, with jitter drawn from math/rand/v2,
// and a context-aware wait. It is meant for every retry loop: optimistic
// transactions that conflicted and watch loops (registry), reconnects and
// failed state writes (agent), restarts (the supervisor's restart
// tracker), so that they share one tested formula and one random source.
//
// A Policy is pure: Policy.Delay gives the n-th delay without jitter and
// Policy.Jittered shortens a delay by a random fraction, so table tests
// can check both. A Backoff counts the attempts of one retry loop:
//
//	b := backoff.New(backoff.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: backoff.HalfJitter})
//	for {
//		if err := try(ctx); err == nil {
//			b.Reset()
//			continue
//		}
//		if err := b.Wait(ctx); err != nil {
//			return err // ctx ended
//		}
//	}
//
// The jitter comes from math/rand/v2's global generator unless a Backoff
// is given its own (NewSeeded, or the Rand field): a seeded generator
// repeats its delays, for deterministic tests. A PCG generator is 16 bytes,
// so one per supervised instance costs little.
//
// backoff imports only the standard library; every part of Visor may use
// it (internal/deptest).
package backoff
