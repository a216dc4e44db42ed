package restart

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/visorhq/visor/internal/backoff"
)

// Restart modes of a Policy.
const (
	// ModeAlways restarts after every exit, clean or not. It is the default.
	ModeAlways = "always"
	// ModeOnFailure restarts only after an exit that is not a clean exit 0.
	ModeOnFailure = "on-failure"
	// ModeNever never restarts.
	ModeNever = "never"
)

// Restart reasons, the keys of the supervisor's restart counters.
const (
	ReasonFail   = "fail"
	ReasonOOM    = "oom"
	ReasonHealth = "health"
	ReasonManual = "manual"
)

// Defaults applied to the zero values of a Policy.
const (
	DefaultInitialDelay = 100 * time.Millisecond
	DefaultMaxDelay     = 30 * time.Second
	DefaultJitter       = 0.2
	DefaultResetAfter   = 10 * time.Second
)

// ErrInvalidPolicy is wrapped by every error of Policy.Validate.
var ErrInvalidPolicy = errors.New("restart: invalid policy")

// Policy says when and how fast an exited process is restarted. The zero
// value restarts always, with an exponential backoff from 100ms doubling up to
// 30s, 20% jitter, reset after 10s of stable uptime and no restart limit.
type Policy struct {
	// Mode is ModeAlways (also ""), ModeOnFailure or ModeNever.
	Mode string `json:"mode,omitempty"`
	// InitialDelay is the delay before the first restart of a crash loop;
	// it doubles on each further restart. Zero means 100ms.
	InitialDelay time.Duration `json:"initial_delay,omitempty"`
	// MaxDelay caps the delay. Zero means 30s.
	MaxDelay time.Duration `json:"max_delay,omitempty"`
	// Jitter, in 0..1, shortens each delay by a random fraction of up to
	// Jitter, so that processes crashing together do not restart together.
	// Zero means 0.2.
	Jitter float64 `json:"jitter,omitempty"`
	// ResetAfter is the uptime after which a run counts as stable: the next
	// exit starts a fresh backoff and a fresh restart budget. Zero means 10s.
	ResetAfter time.Duration `json:"reset_after,omitempty"`
	// MaxRestarts limits consecutive restarts without a stable run; the exit
	// after the last allowed restart makes the instance failed. Zero means
	// unlimited.
	MaxRestarts int `json:"max_restarts,omitempty"`
	// NoBackoff restarts at once, without delay or jitter (tests,
	// benchmarks, processes that must never be down).
	NoBackoff bool `json:"no_backoff,omitempty"`
}

// Validate reports a malformed policy; the error wraps ErrInvalidPolicy.
func (p Policy) Validate() error {
	switch p.Mode {
	case "", ModeAlways, ModeOnFailure, ModeNever:
	default:
		return fmt.Errorf("%w: unknown mode %q", ErrInvalidPolicy, p.Mode)
	}
	if p.InitialDelay < 0 || p.MaxDelay < 0 || p.ResetAfter < 0 {
		return fmt.Errorf("%w: negative duration", ErrInvalidPolicy)
	}
	if p.Jitter < 0 || p.Jitter > 1 {
		return fmt.Errorf("%w: jitter %v outside 0..1", ErrInvalidPolicy, p.Jitter)
	}
	if p.MaxRestarts < 0 {
		return fmt.Errorf("%w: negative max restarts", ErrInvalidPolicy)
	}
	return nil
}

// WithDefaults returns p with its zero values replaced by the defaults.
func (p Policy) WithDefaults() Policy {
	if p.Mode == "" {
		p.Mode = ModeAlways
	}
	if p.InitialDelay == 0 {
		p.InitialDelay = DefaultInitialDelay
	}
	if p.MaxDelay == 0 {
		p.MaxDelay = DefaultMaxDelay
	}
	if p.MaxDelay < p.InitialDelay {
		p.MaxDelay = p.InitialDelay
	}
	if p.Jitter == 0 {
		p.Jitter = DefaultJitter
	}
	if p.ResetAfter == 0 {
		p.ResetAfter = DefaultResetAfter
	}
	return p
}

// Exit describes how a process ended.
type Exit struct {
	// Code is the exit code; meaningless when Signaled or Unknown.
	Code int
	// Signaled reports whether a signal killed the process.
	Signaled bool
	// OOM reports whether the kernel's OOM killer killed it (memory limit).
	OOM bool
	// Health reports whether the supervisor killed it for a failing health check.
	Health bool
	// Unknown reports whether the exit status could not be obtained (an
	// adopted process that is not our child).
	Unknown bool
}

// Clean reports whether e is a known, successful exit 0.
func (e Exit) Clean() bool {
	return !e.Unknown && !e.Signaled && !e.OOM && !e.Health && e.Code == 0
}

// Reason is the restart reason of e: ReasonOOM, ReasonHealth or ReasonFail.
func (e Exit) Reason() string {
	switch {
	case e.OOM:
		return ReasonOOM
	case e.Health:
		return ReasonHealth
	default:
		return ReasonFail
	}
}

// Decision is the outcome of Tracker.Next.
type Decision struct {
	// Restart reports whether to restart after Delay.
	Restart bool
	// Delay is the wait before the restart.
	Delay time.Duration
	// Reason is the restart reason (ReasonFail, ReasonOOM, ReasonHealth),
	// also set when there is no restart.
	Reason string
	// Failed reports whether the restart budget is spent: the instance is
	// failed and not restarted.
	Failed bool
	// Attempt is the number of this restart within the current crash loop,
	// from 1; zero when there is no restart.
	Attempt int
}

// Tracker keeps the crash-loop state of one instance. It is not safe for
// concurrent use; the supervisor guards it with the instance's lock.
type Tracker struct {
	p       Policy
	bo      backoff.Policy // the delays of p
	rnd     *rand.Rand     // nil: math/rand/v2's global generator
	attempt int            // restarts in the current crash loop
}

// NewTracker returns a tracker for p (defaults applied). rnd drives the
// jitter (backoff.Seeded gives a small deterministic one); nil means
// math/rand/v2's global generator.
func NewTracker(p Policy, rnd *rand.Rand) *Tracker {
	p = p.WithDefaults()
	return &Tracker{p: p, bo: backoff.Policy{Initial: p.InitialDelay, Max: p.MaxDelay, Jitter: p.Jitter}, rnd: rnd}
}

// Attempt returns the number of restarts in the current crash loop.
func (t *Tracker) Attempt() int { return t.attempt }

// Reset forgets the crash loop (after a manual restart).
func (t *Tracker) Reset() { t.attempt = 0 }

// Next decides what follows exit e of a process started at started, at time
// now. A run of at least ResetAfter resets the backoff and the budget first.
func (t *Tracker) Next(e Exit, started, now time.Time) Decision {
	d := Decision{Reason: e.Reason()}
	if !started.IsZero() && now.Sub(started) >= t.p.ResetAfter {
		t.attempt = 0
	}
	switch t.p.Mode {
	case ModeNever:
		return d
	case ModeOnFailure:
		if e.Clean() {
			return d
		}
	}
	if t.p.MaxRestarts > 0 && t.attempt >= t.p.MaxRestarts {
		d.Failed = true
		return d
	}
	t.attempt++
	d.Restart = true
	d.Attempt = t.attempt
	if t.p.NoBackoff {
		return d
	}
	d.Delay = t.bo.Jittered(t.bo.Delay(t.attempt), t.rnd)
	return d
}
