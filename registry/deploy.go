package registry

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Strategy is how a process type's instances move to a new revision
// (Nomad's update stanza). Zero fields take the defaults (WithDefaults);
// MinHealthy is a pointer because zero is a meaningful value for it (a new
// instance counts as healthy as soon as it runs).
type Strategy struct {
	// MaxParallel is the most new instances started and not yet healthy
	// at once. Default 1.
	MaxParallel int `json:"max_parallel,omitempty"`
	// MinHealthy is how long a new instance must have been running
	// (health check passed and min uptime, see the supervisor) to count
	// as healthy. nil: DefaultMinHealthy.
	MinHealthy *Duration `json:"min_healthy,omitempty"`
	// HealthyDeadline is how long a new instance may take from its
	// creation to running; later, the deployment fails. Default 5m.
	HealthyDeadline Duration `json:"healthy_deadline,omitempty"`
	// ProgressDeadline is how long the deployment may go without progress
	// (one more instance healthy in its place, or one fewer old one);
	// later, it fails. Default 10m.
	ProgressDeadline Duration `json:"progress_deadline,omitempty"`
	// Canary is how many new instances start beside the old ones before
	// the rest moves; the deployment then awaits promotion. 0: none.
	Canary int `json:"canary,omitempty"`
	// AutoRevert moves a failed deployment's instances back to the
	// revisions they ran before, the same rolling way.
	AutoRevert bool `json:"auto_revert,omitempty"`
	// AutoPromote promotes the canaries once they are healthy.
	AutoPromote bool `json:"auto_promote,omitempty"`
}

// Strategy defaults.
const (
	DefaultMaxParallel      = 1
	DefaultMinHealthy       = 10 * time.Second
	DefaultHealthyDeadline  = 5 * time.Minute
	DefaultProgressDeadline = 10 * time.Minute
)

// WithDefaults returns s with its zero fields set to the defaults.
func (s Strategy) WithDefaults() Strategy {
	if s.MaxParallel == 0 {
		s.MaxParallel = DefaultMaxParallel
	}
	if s.MinHealthy == nil {
		d := Duration(DefaultMinHealthy)
		s.MinHealthy = &d
	}
	if s.HealthyDeadline == 0 {
		s.HealthyDeadline = Duration(DefaultHealthyDeadline)
	}
	if s.ProgressDeadline == 0 {
		s.ProgressDeadline = Duration(DefaultProgressDeadline)
	}
	return s
}

// MinHealthyTime is MinHealthy, or its default when unset.
func (s Strategy) MinHealthyTime() time.Duration {
	if s.MinHealthy == nil {
		return DefaultMinHealthy
	}
	return time.Duration(*s.MinHealthy)
}

// Merge returns s with the fields set in o (non-zero, MinHealthy non-nil,
// booleans true) taking their place; a nil o changes nothing.
func (s Strategy) Merge(o *Strategy) Strategy {
	if o == nil {
		return s
	}
	if o.MaxParallel != 0 {
		s.MaxParallel = o.MaxParallel
	}
	if o.MinHealthy != nil {
		d := *o.MinHealthy
		s.MinHealthy = &d
	}
	if o.HealthyDeadline != 0 {
		s.HealthyDeadline = o.HealthyDeadline
	}
	if o.ProgressDeadline != 0 {
		s.ProgressDeadline = o.ProgressDeadline
	}
	if o.Canary != 0 {
		s.Canary = o.Canary
	}
	s.AutoRevert = s.AutoRevert || o.AutoRevert
	s.AutoPromote = s.AutoPromote || o.AutoPromote
	return s
}

// Valid returns an ErrInvalid error naming the first field that is
// negative, or, once defaults are applied, a healthy deadline not longer
// than min healthy or a progress deadline shorter than the healthy one.
func (s Strategy) Valid() error {
	neg := func(field string, bad bool, v any) error {
		if bad {
			return fmt.Errorf("%w: %s %v is negative", ErrInvalid, field, v)
		}
		return nil
	}
	var mh Duration
	if s.MinHealthy != nil {
		mh = *s.MinHealthy
	}
	if err := firstErr(
		neg("max parallel", s.MaxParallel < 0, s.MaxParallel),
		neg("min healthy", mh < 0, mh),
		neg("healthy deadline", s.HealthyDeadline < 0, s.HealthyDeadline),
		neg("progress deadline", s.ProgressDeadline < 0, s.ProgressDeadline),
		neg("canary", s.Canary < 0, s.Canary),
	); err != nil {
		return err
	}
	d := s.WithDefaults()
	if time.Duration(d.HealthyDeadline) <= d.MinHealthyTime() {
		return fmt.Errorf("%w: healthy deadline %s must be longer than min healthy %s", ErrInvalid,
			d.HealthyDeadline, d.MinHealthyTime())
	}
	if d.ProgressDeadline < d.HealthyDeadline {
		return fmt.Errorf("%w: progress deadline %s must not be shorter than the healthy deadline %s", ErrInvalid,
			d.ProgressDeadline, d.HealthyDeadline)
	}
	return nil
}

// StrategyFields are the names ParseStrategy takes, as the CLI's flags
// spell them.
var StrategyFields = []string{"max-parallel", "min-healthy", "healthy-deadline", "progress-deadline",
	"canary", "auto-revert", "auto-promote"}

// ParseStrategy builds a Strategy from textual values by field name (see
// StrategyFields; "_" may stand for "-"): counts in decimal, durations in
// Go notation ("10s", "5m"), booleans as strconv.ParseBool reads them.
// A value that does not parse, a negative one, or zero where zero means
// nothing (max-parallel, the deadlines) fails with ErrInvalid naming the
// field; min-healthy 0 and canary 0 are meaningful. Unset fields stay
// zero (the defaults, or the process type's, apply).
func ParseStrategy(vals map[string]string) (Strategy, error) {
	var s Strategy
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := s.parseField(strings.ReplaceAll(k, "_", "-"), strings.TrimSpace(vals[k])); err != nil {
			return Strategy{}, err
		}
	}
	return s, s.Valid()
}

func (s *Strategy) parseField(field, v string) error {
	bad := func(why string) error { return fmt.Errorf("%w: %s %s: %s", ErrInvalid, field, short(v), why) }
	dur := func(zeroOK bool) (Duration, error) {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			return 0, bad("not a duration like 10s or 5m")
		case d < 0:
			return 0, bad("is negative")
		case d == 0 && !zeroOK:
			return 0, bad("must be more than 0")
		}
		return Duration(d), nil
	}
	count := func(zeroOK bool) (int, error) {
		n, err := strconv.Atoi(v)
		switch {
		case err != nil:
			return 0, bad("not a whole number")
		case n < 0:
			return 0, bad("is negative")
		case n == 0 && !zeroOK:
			return 0, bad("must be at least 1")
		}
		return n, nil
	}
	var err error
	switch field {
	case "max-parallel":
		s.MaxParallel, err = count(false)
	case "canary":
		s.Canary, err = count(true)
	case "min-healthy":
		var d Duration
		d, err = dur(true)
		s.MinHealthy = &d
	case "healthy-deadline":
		s.HealthyDeadline, err = dur(false)
	case "progress-deadline":
		s.ProgressDeadline, err = dur(false)
	case "auto-revert", "auto-promote":
		b, perr := strconv.ParseBool(v)
		if perr != nil {
			return bad("not true or false")
		}
		if field == "auto-revert" {
			s.AutoRevert = b
		} else {
			s.AutoPromote = b
		}
	default:
		return fmt.Errorf("%w: unknown strategy field %s (want one of %s)", ErrInvalid, short(field),
			strings.Join(StrategyFields, ", "))
	}
	return err
}

// DeployState is the state of a deployment.
type DeployState string

// Deployment states. Running, awaiting promotion, paused and reverting
// are active (at most one deployment of an app is); the others are
// terminal.
const (
	DeployRunning           DeployState = "running"
	DeployAwaitingPromotion DeployState = "awaiting_promotion"
	DeployPaused            DeployState = "paused"
	DeploySucceeded         DeployState = "succeeded"
	DeployFailed            DeployState = "failed"
	DeployReverting         DeployState = "reverting"
	DeployReverted          DeployState = "reverted"
	// DeployCancelled is a deployment replaced by a forced one.
	DeployCancelled DeployState = "cancelled"
)

// deployStates is the one list of the deployment states.
var deployStates = []DeployState{DeployRunning, DeployAwaitingPromotion, DeployPaused, DeploySucceeded,
	DeployFailed, DeployReverting, DeployReverted, DeployCancelled}

// Valid reports whether s is one of the deployment states.
func (s DeployState) Valid() bool { return slices.Contains(deployStates, s) }

// Terminal reports whether s is final: succeeded, failed, reverted or
// cancelled.
func (s DeployState) Terminal() bool {
	return s == DeploySucceeded || s == DeployFailed || s == DeployReverted || s == DeployCancelled
}

// String returns the state name.
func (s DeployState) String() string { return string(s) }

// DeployProc is one process type of a deployment: what it moves and, as
// the driver writes it, how far it got. "New" is the deployment's Rev,
// "old" every other revision.
type DeployProc struct {
	Proc string `json:"proc"`
	// Count is the total to keep: the process type's desired count over
	// all revisions at create; a Scale of the deployment's revision
	// during the deployment sets it.
	Count int `json:"count"`
	// From is each old revision's desired count at create (revisions with
	// none are left out); NewBefore is the new revision's own. A revert
	// moves back to them.
	From      map[string]int `json:"from,omitempty"`
	NewBefore int            `json:"new_before,omitempty"`
	// Strategy is the effective strategy: defaults, then the process
	// type's Update, then the deployment's override.
	Strategy Strategy `json:"strategy"`
	// Progress, written by the driver. Placed counts the new revision's
	// counted instances, Healthy those healthy (running for MinHealthy),
	// Unhealthy those failing; OldLeft the old revisions' counted
	// instances.
	Placed    int `json:"placed"`
	Healthy   int `json:"healthy"`
	Unhealthy int `json:"unhealthy"`
	OldLeft   int `json:"old_left"`
	// Settled counts instances healthy in their final place (toward Count
	// while running, toward From while reverting) and Excess the desired
	// instances still to remove from revisions above their target: the
	// driver's measure of progress (see ProgressDeadline).
	Settled int `json:"settled"`
	Excess  int `json:"excess"`
	// Promoted is set once the canaries are promoted (or without canaries).
	Promoted bool `json:"promoted,omitempty"`
}

// Deployment is the record of one rollout of an app to a revision.
type Deployment struct {
	App string `json:"app"`
	// ID sorts by creation: "d-" and 16 hex digits of nanoseconds then 8
	// random ones.
	ID    string       `json:"id"`
	Rev   string       `json:"rev"`
	Procs []DeployProc `json:"procs"`
	State DeployState  `json:"state"`
	// Reason says why the deployment failed, reverts, was paused or
	// cancelled.
	Reason string `json:"reason,omitempty"`
	// RevertOf is the id of the deployment this one reverts (a Rollback).
	RevertOf string `json:"revert_of,omitempty"`
	// PausedIn is the state a paused deployment resumes to.
	PausedIn DeployState `json:"paused_in,omitempty"`
	// By is who asked (user@host from the CLI).
	By      string    `json:"by,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	// PhaseStart is when the current direction began (create, or the
	// start of the revert); instance failures from before it do not
	// count. Progressed is the last progress (or create, resume,
	// promotion, revert): ProgressDeadline counts from it.
	PhaseStart time.Time `json:"phase_start"`
	Progressed time.Time `json:"progressed"`
	// Ended is when the deployment became terminal.
	Ended time.Time `json:"ended,omitzero"`
	// ModRevision is the etcd revision of the record's last write (of the
	// active key while active); not stored. Every change compares it.
	ModRevision int64 `json:"-"`
}

// Active reports whether the deployment is not terminal.
func (d Deployment) Active() bool { return !d.State.Terminal() }

// Proc returns the deployment's entry for proc, if it has one.
func (d Deployment) Proc(proc string) (DeployProc, bool) {
	for _, p := range d.Procs {
		if p.Proc == proc {
			return p, true
		}
	}
	return DeployProc{}, false
}

// Targets returns the desired count per revision the deployment moves p
// to in its current state: Count on the deployment's revision (at most
// the canaries before promotion, the old counts kept meanwhile), or,
// reverting, From and NewBefore.
func (d Deployment) Targets(p DeployProc) map[string]int {
	if d.State == DeployReverting || (d.State == DeployPaused && d.PausedIn == DeployReverting) {
		t := make(map[string]int, len(p.From)+1)
		for rev, n := range p.From {
			t[rev] = n
		}
		t[d.Rev] = p.NewBefore
		return t
	}
	return map[string]int{d.Rev: p.Count}
}

// KindDeploy is the BadRecord kind of deployment records.
const KindDeploy = "deployment"

// ErrStale reports that a record changed since the caller read it: a
// deployment step planned on an older read (another leader's, or before
// an operator's action) is refused whole.
var ErrStale = errors.New("registry: record changed since read")

// Keys (see doc.go).
func (r *Registry) deployingDir() string            { return r.prefix + "deploying/" }
func (r *Registry) deployingKey(app string) string  { return r.deployingDir() + app }
func (r *Registry) deploysDir(app string) string    { return r.prefix + "deploys/" + app + "/" }
func (r *Registry) deployKey(app, id string) string { return r.deploysDir(app) + id }

// newDeployID returns a deployment id that sorts by creation time.
func newDeployID() string { return "d-" + newTicketID() }

// decodeDeploy decodes and checks a deployment record stored under key.
func decodeDeploy(key, v []byte, mod int64, app string) (Deployment, error) {
	var d Deployment
	if err := decodeJSON(KindDeploy, key, v, &d); err != nil {
		return Deployment{}, err
	}
	d.ModRevision = mod
	if d.App != app {
		return Deployment{}, corrupt(KindDeploy, key, fmt.Errorf("app %s does not match its key", short(d.App)))
	}
	if !d.State.Valid() {
		return Deployment{}, corrupt(KindDeploy, key, fmt.Errorf("unknown deployment state %s", short(string(d.State))))
	}
	err := firstErr(validName("app name", d.App), validID("deployment id", d.ID), validName("revision name", d.Rev))
	for _, p := range d.Procs {
		err = firstErr(err, validName("process type", p.Proc), p.Strategy.Valid())
		for rev := range p.From {
			err = firstErr(err, validName("revision name", rev))
		}
		if p.Count < 0 {
			err = firstErr(err, fmt.Errorf("negative count %d", p.Count))
		}
	}
	if err != nil {
		return Deployment{}, invalid(KindDeploy, key, err)
	}
	return d, nil
}
