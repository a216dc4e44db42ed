package agent

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/visorhq/visor/registry"
)

// # Deployments
//
// The elected reconciler drives every active deployment (registry
// records, see registry.CreateDeployment) from the registry alone: each
// pass plans the next step of each one from its record, the desired
// counts of its app and the app's instances (planDeploy: pure, no I/O,
// the time from the snapshot) and writes it with registry.DeployStep, one
// transaction that compares the record's mod revision. Nothing that
// matters lives in the leader's memory: a killed, restarted or second
// leader plans from the same records, and a step planned on a record that
// changed since is refused whole (registry.ErrStale), so no step is taken
// twice.
//
// A step moves desired counts; the existing machinery (tickets, claims,
// the reconciler's rescale of drift, drain replacements, lost hosts)
// moves instances. For each process type the targets are the deployment's
// revision at Count and the others at 0 (reverting: the counts it moved
// from). Per pass, with M the strategy's MaxParallel and healthy meaning
// counted and running (health check passed, min uptime: the supervisor
// reports running only then) for at least MinHealthy:
//
//   - raise: revisions below their target go up while the instances
//     wanted toward a target but not yet healthy number fewer than M;
//   - lower: revisions above their target go down as far as the healthy
//     instances in their final place (settled) allow: the excess kept is
//     Count - settled - waiting (waiting: wanted instances that have no
//     instance record yet because the fleet has no room, as their
//     registry.ScaleStatus says; at most M), so capacity never drops
//     below Count - M and a full fleet still moves;
//   - canaries: until promoted, the deployment's revision goes only to
//     Canary and nothing is lowered; once they are healthy the record
//     awaits promotion (or, with AutoPromote, is promoted);
//   - failure: an instance of a revision being moved to, created since the
//     phase began, that failed, exited with an error, crash-loops (in
//     backoff after crashLoopRestarts restarts), could not start on any
//     live host (every one failed its start ticket) or is not running
//     within HealthyDeadline of its creation; or no progress (settled up or
//     excess down) within ProgressDeadline. The record fails naming the
//     instance and cause (registry.Deployment.Fail: reverting with
//     AutoRevert or unpromoted canaries, else failed, nothing more
//     stopped);
//   - done: every instance settled and no excess: succeeded (reverted
//     when reverting).
//
// A paused deployment is not planned. A Scale of the target revision
// changes Count (registry), which the next pass moves toward; instances
// lost with a host or replaced by a drain stop counting and their
// replacements count again, so the step bounds hold through both.

// crashLoopRestarts is how many restarts (other than manual ones) of an
// instance in backoff make it crash-looping, as `visor scale --wait`
// decides it.
const crashLoopRestarts = 3

// deployPlan is the next step of one deployment.
type deployPlan struct {
	d      registry.Deployment    // as read
	change *registry.DeployChange // nil: nothing to write
	// next is how soon the clock alone changes something (an instance
	// becomes healthy, a deadline passes); 0: never.
	next time.Duration
}

// procView is what a pass sees of one process type of a deployment.
type procView struct {
	scale   map[string]int // rev -> desired count
	counted map[string]int // rev -> counted instances
	healthy map[string]int // rev -> counted instances healthy
	// failure is the first failing instance's cause; unhealthy counts
	// them.
	failure   string
	unhealthy int
	short     map[string]bool // scale keys whose instances wait for room
	wake      time.Time       // earliest time the clock alone changes the view
}

// deployInput is what planDeploy decides on, from the pass's snapshot.
type deployInput struct {
	scales []registry.ScaleEntry
	insts  []registry.Instance
	// short holds the scale keys ("app/rev/proc") whose instances wait
	// for room (a stored registry.ScaleStatus).
	short map[string]bool
	// unstartable maps the instances whose start ticket every live host
	// has failed to the last reason given.
	unstartable map[string]string
}

// planDeploy plans the next step of d from in at now. It is pure.
func planDeploy(d registry.Deployment, in deployInput, now time.Time) deployPlan {
	scales := in.scales
	out := deployPlan{d: d}
	switch d.State {
	case registry.DeployRunning, registry.DeployAwaitingPromotion, registry.DeployReverting:
	default:
		return out
	}
	next := d
	next.Procs = slices.Clone(d.Procs)
	var moves []registry.DeployScale
	var failure string
	progressed, done, canariesReady, autoPromote, unpromoted := false, true, true, true, false
	var wake time.Time
	for i, p := range d.Procs {
		t, hold := deployTargets(d, p, scales)
		v := viewProc(d, p, in, now)
		wake = earliest(wake, v.wake)
		if v.failure != "" && failure == "" {
			failure = p.Proc + ": " + v.failure
		}
		np := v.progress(d, p, t)
		progressed = progressed || np.Settled > p.Settled || np.Excess < p.Excess
		next.Procs[i] = np
		if d.State != registry.DeployAwaitingPromotion {
			moves = append(moves, rollStep(d.App, p, t, v, hold)...)
		}
		done = done && np.Settled == sum(t) && np.Excess == 0 && (p.Promoted || d.State == registry.DeployReverting)
		if !p.Promoted {
			unpromoted = true
			canariesReady = canariesReady && v.healthy[d.Rev] >= t[d.Rev]
			autoPromote = autoPromote && p.Strategy.AutoPromote
		}
	}
	if progressed {
		next.Progressed = now
	}
	if failure == "" && !progressed && d.State != registry.DeployAwaitingPromotion {
		failure = stalled(next, now)
		wake = earliest(wake, progressDue(next))
	}
	switch {
	case failure != "":
		next, moves = next.Fail(failure, now), nil
	case done:
		next.State, next.Ended = registry.DeploySucceeded, now
		if d.State == registry.DeployReverting {
			next.State = registry.DeployReverted
		}
	case d.State == registry.DeployRunning && unpromoted && canariesReady:
		next = promoteOrAwait(next, autoPromote, now)
	}
	if wake.After(now) {
		out.next = wake.Sub(now)
	}
	if len(moves) > 0 || recordChanged(d, next) {
		next.Updated = now
		out.change = &registry.DeployChange{Scales: moves, Next: next}
	}
	return out
}

// promoteOrAwait moves a deployment whose canaries are all healthy on:
// promoted at once with AutoPromote, else awaiting promotion.
func promoteOrAwait(d registry.Deployment, auto bool, now time.Time) registry.Deployment {
	if !auto {
		d.State = registry.DeployAwaitingPromotion
		return d
	}
	for i := range d.Procs {
		d.Procs[i].Promoted = true
	}
	d.Progressed = now
	return d
}

// deployTargets returns the desired count per revision p moves to (every
// revision with a count but no target goes to 0) and whether the
// revisions above their target hold (canaries not yet promoted: nothing
// is lowered, the deployment's revision goes only to Canary).
func deployTargets(d registry.Deployment, p registry.DeployProc, scales []registry.ScaleEntry) (map[string]int, bool) {
	t := d.Targets(p)
	cur := scaleOf(scales, d.App, p.Proc)
	for rev := range cur {
		if _, ok := t[rev]; !ok {
			t[rev] = 0
		}
	}
	if p.Promoted || d.State == registry.DeployReverting {
		return t, false
	}
	for rev := range t {
		t[rev] = cur[rev]
	}
	t[d.Rev] = min(p.Strategy.Canary, p.Count)
	return t, true
}

// movingTo reports whether rev is a revision p's instances move to: the
// deployment's revision, or reverting, the ones it moved from.
func movingTo(d registry.Deployment, p registry.DeployProc, rev string) bool {
	if d.State == registry.DeployReverting {
		return p.From[rev] > 0
	}
	return rev == d.Rev
}

// viewProc counts p's instances per revision and finds failures among
// those of the revisions it moves to.
func viewProc(d registry.Deployment, p registry.DeployProc, di deployInput, now time.Time) procView {
	v := procView{scale: scaleOf(di.scales, d.App, p.Proc), counted: map[string]int{}, healthy: map[string]int{},
		short: di.short}
	minHealthy := p.Strategy.MinHealthyTime()
	for _, in := range di.insts {
		if in.App != d.App || in.Proc != p.Proc {
			continue
		}
		counted := in.State.Live() && in.StopTicket == "" && in.ReplacedBy == ""
		if counted {
			v.counted[in.Rev]++
		}
		if counted && in.State == registry.InstanceRunning {
			if at := in.Since.Add(minHealthy); !now.Before(at) {
				v.healthy[in.Rev]++
			} else {
				v.wake = earliest(v.wake, at)
			}
		}
		if !movingTo(d, p, in.Rev) || in.Created.Before(d.PhaseStart) {
			continue
		}
		why, deadline := instanceFailure(in, p.Strategy, now)
		if reason, ok := di.unstartable[in.ID]; ok && why == "" && in.State == registry.InstancePending {
			why = "could not start on any live host: " + orNone(reason)
		}
		v.wake = earliest(v.wake, deadline)
		if why != "" {
			v.unhealthy++
			if v.failure == "" {
				v.failure = fmt.Sprintf("instance %s of %s %s", in.ID, in.Rev, why)
			}
		}
	}
	return v
}

// instanceFailure says why an instance of a revision being moved to
// fails the deployment ("" if it does not), and when it will unless it
// runs first (its healthy deadline; zero if none is pending).
func instanceFailure(in registry.Instance, s registry.Strategy, now time.Time) (string, time.Time) {
	if in.StopTicket != "" || in.ReplacedBy != "" {
		return "", time.Time{} // being stopped or replaced on purpose
	}
	restarts := 0
	for reason, n := range in.Restarts {
		if reason != "manual" {
			restarts += n
		}
	}
	switch in.State {
	case registry.InstanceFailed:
		return "failed: " + orNone(in.Reason), time.Time{}
	case registry.InstanceExited:
		if last := lastExit(in); last != "" {
			return "exited with " + last, time.Time{}
		}
	case registry.InstanceBackoff:
		if restarts >= crashLoopRestarts {
			return fmt.Sprintf("is crash-looping: %d restarts, last %s", restarts, orNone(lastExit(in)+reasonSuffix(in))), time.Time{}
		}
	case registry.InstancePending, registry.InstanceClaimed, registry.InstanceStarting:
		if restarts > 0 {
			break // it ran: a crash loop is how it fails
		}
		deadline := in.Created.Add(time.Duration(s.HealthyDeadline))
		if !now.Before(deadline) {
			why := fmt.Sprintf("is not running within the healthy deadline %s (still %s", time.Duration(s.HealthyDeadline), in.State)
			if in.Health != "" {
				why += "; last health check: " + in.Health
			}
			return why + ")", time.Time{}
		}
		return "", deadline
	}
	return "", time.Time{}
}

// lastExit names an instance's last exit: its code or signal, "" for
// neither or a clean exit.
func lastExit(in registry.Instance) string {
	switch {
	case in.ExitCode != nil && *in.ExitCode != 0:
		return fmt.Sprintf("exit code %d", *in.ExitCode)
	case in.Signal != "":
		return "signal " + in.Signal
	}
	return ""
}

func reasonSuffix(in registry.Instance) string {
	if in.Reason == "" {
		return ""
	}
	return " (" + in.Reason + ")"
}

func orNone(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// progress returns p with the counts v shows toward targets t.
func (v procView) progress(d registry.Deployment, p registry.DeployProc, t map[string]int) registry.DeployProc {
	p.Placed, p.Healthy, p.Unhealthy, p.OldLeft = v.counted[d.Rev], v.healthy[d.Rev], v.unhealthy, 0
	for rev, n := range v.counted {
		if rev != d.Rev {
			p.OldLeft += n
		}
	}
	p.Settled, p.Excess = 0, 0
	for rev, want := range t {
		p.Settled += min(v.healthy[rev], want)
		p.Excess += max(0, v.scale[rev]-want)
	}
	return p
}

// rollStep returns the scale changes of one rolling step of p toward
// targets t (see the package comment): raise while fewer than MaxParallel
// instances toward a target are unhealthy, lower the excess as far as the
// settled instances allow (never while hold).
func rollStep(app string, p registry.DeployProc, t map[string]int, v procView, hold bool) []registry.DeployScale {
	m := p.Strategy.MaxParallel
	revs := slices.Sorted(maps.Keys(t))
	settled, inflight, waiting, excess := 0, 0, 0, 0
	for _, rev := range revs {
		in := min(v.scale[rev], t[rev])
		settled += min(v.healthy[rev], t[rev])
		inflight += max(0, in-v.healthy[rev])
		if v.short[scaleKey(app, rev, p.Proc)] {
			waiting += max(0, in-v.counted[rev])
		}
		excess += max(0, v.scale[rev]-t[rev])
	}
	var out []registry.DeployScale
	budget := max(0, m-inflight)
	for _, rev := range revs {
		if cur := v.scale[rev]; t[rev] > cur && budget > 0 {
			add := min(t[rev]-cur, budget)
			budget -= add
			out = append(out, registry.DeployScale{Rev: rev, Proc: p.Proc, From: cur, To: cur + add})
		}
	}
	if hold {
		return out
	}
	remove := max(0, excess-max(0, sum(t)-settled-min(waiting, m)))
	for _, rev := range revs {
		if cur := v.scale[rev]; cur > t[rev] && remove > 0 {
			n := min(cur-t[rev], remove)
			remove -= n
			out = append(out, registry.DeployScale{Rev: rev, Proc: p.Proc, From: cur, To: cur - n})
		}
	}
	return out
}

// stalled returns why d fails for want of progress at now, "" if it does
// not (yet).
func stalled(d registry.Deployment, now time.Time) string {
	for _, p := range d.Procs {
		pd := time.Duration(p.Strategy.ProgressDeadline)
		if pd > 0 && now.Sub(d.Progressed) >= pd {
			return fmt.Sprintf("%s: no progress for %s (progress deadline): %d of %d instances settled, %d to remove",
				p.Proc, now.Sub(d.Progressed).Round(time.Second), p.Settled, p.Count, p.Excess)
		}
	}
	return ""
}

// progressDue is when d's earliest progress deadline passes.
func progressDue(d registry.Deployment) time.Time {
	var due time.Time
	for _, p := range d.Procs {
		if pd := time.Duration(p.Strategy.ProgressDeadline); pd > 0 {
			due = earliest(due, d.Progressed.Add(pd))
		}
	}
	return due
}

// recordChanged reports whether next differs from d in what the driver
// writes: state, reason, times, progress.
func recordChanged(d, next registry.Deployment) bool {
	return d.State != next.State || d.Reason != next.Reason || !d.Progressed.Equal(next.Progressed) ||
		!slices.EqualFunc(d.Procs, next.Procs, func(a, b registry.DeployProc) bool {
			return a.Placed == b.Placed && a.Healthy == b.Healthy && a.Unhealthy == b.Unhealthy &&
				a.OldLeft == b.OldLeft && a.Settled == b.Settled && a.Excess == b.Excess && a.Promoted == b.Promoted
		})
}

// scaleOf returns the desired counts of app/proc per revision.
func scaleOf(scales []registry.ScaleEntry, app, proc string) map[string]int {
	out := map[string]int{}
	for _, s := range scales {
		if s.App == app && s.Proc == proc {
			out[s.Rev] = s.Desired
		}
	}
	return out
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// earliest returns the earlier of a and b, ignoring zero times.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
