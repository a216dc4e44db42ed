package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/supervisor/restart"
)

// crashLoopRestarts is how many restarts (other than manual ones) make an
// instance in backoff a crash loop for `scale --wait`: it fails at once
// instead of waiting out its timeout (issue 17, item 1).
const crashLoopRestarts = 3

// errWaitFailed marks a --wait that ended because the outcome is known to
// be a failure (not a timeout).
var errWaitFailed = errors.New("will not reach the desired count")

// readStable sets, per process type of w, how long an instance must have
// been running to count: its restart policy's reset-after window (the
// uptime after which the supervisor too counts a run as stable); and its
// health deadline (healthDeadline). A proc type that cannot be read gets
// the default window and no health deadline.
func (w *scaleWaiter) readStable(ctx context.Context, r *registry.Registry) {
	for _, a := range w.want {
		d := restart.DefaultResetAfter
		// The process type the instances run: the revision's release's
		// (the app's for a draft revision).
		l, err := r.Launch(ctx, w.app, w.rev, a.proc)
		_, err = registry.Skipped(err)
		p := l.ProcType
		if err == nil && p.Restart.ResetAfter > 0 {
			d = time.Duration(p.Restart.ResetAfter)
		}
		if err == nil {
			w.healthDeadline[a.proc] = healthDeadline(p)
		}
		w.stable[a.proc] = d
	}
}

// stableRunning counts, per process type, the instances running for at
// least their stable window at now, and returns when the next running
// instance becomes stable (zero if none is pending).
func (w *scaleWaiter) stableRunning(now time.Time) (map[string]int, time.Time) {
	n := make(map[string]int, len(w.want))
	var next time.Time
	for id, st := range w.state {
		if st != registry.InstanceRunning {
			continue
		}
		proc := w.procOf[id]
		at := w.since[id].Add(w.stable[proc])
		if !now.Before(at) {
			n[proc]++
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return n, next
}

// noteSince records when an instance was seen entering running: its
// record's Since when read from the registry, else now.
func (w *scaleWaiter) noteSince(inst registry.Instance, now time.Time) {
	if inst.State != registry.InstanceRunning {
		delete(w.since, inst.ID)
		return
	}
	if _, ok := w.since[inst.ID]; ok && w.state[inst.ID] == registry.InstanceRunning {
		return
	}
	since := inst.Since
	if since.IsZero() || since.After(now) {
		since = now
	}
	w.since[inst.ID] = since
}

// crashLoop returns the failure of an instance in backoff that has
// restarted crashLoopRestarts times or more, naming its last exit.
func crashLoop(inst registry.Instance) error {
	if inst.State != registry.InstanceBackoff {
		return nil
	}
	n := 0
	for reason, c := range inst.Restarts {
		if reason != "manual" {
			n += c
		}
	}
	if n < crashLoopRestarts {
		return nil
	}
	last := "exited"
	switch {
	case inst.ExitCode != nil:
		last = fmt.Sprintf("exit code %d", *inst.ExitCode)
	case inst.Signal != "":
		last = "killed by signal " + inst.Signal
	}
	msg := fmt.Sprintf("%s/%s/%s: instance %s is crash-looping: %d restarts, last %s", inst.App, inst.Rev, inst.Proc, inst.ID, n, last)
	if inst.Reason != "" {
		msg += " (" + inst.Reason + ")"
	}
	return fmt.Errorf("%s: %w", msg, errWaitFailed)
}

// failedEverywhere returns the failure of start ticket t when every live
// host has failed it: no host is left to try; err is an error reading the
// hosts.
func failedEverywhere(ctx context.Context, r *registry.Registry, t registry.Ticket) (fail, err error) {
	if t.Op != registry.TicketStart || len(t.FailedHosts) == 0 {
		return nil, nil
	}
	hosts, err := r.Hosts(ctx)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return nil, fmt.Errorf("wait for scale: hosts: %w", err)
	}
	for _, h := range hosts {
		if !slices.Contains(t.FailedHosts, h.ID) {
			return nil, nil
		}
	}
	reason := "no reason given"
	if len(t.Reasons) > 0 {
		reason = t.Reasons[len(t.Reasons)-1]
	}
	return fmt.Errorf("%s/%s/%s: start of instance %s failed on every live host (%d of %d attempts): %s: %w",
		t.App, t.Rev, t.Proc, t.Instance, t.Attempts, t.MaxAttempts, reason, errWaitFailed), nil
}

// healthStartGrace is what an instance's start may take beyond its health
// check's failure window before `scale --wait` calls a failing check a
// failure: the time to exec the program and open its port.
const healthStartGrace = 10 * time.Second

// healthDeadline is how long an instance of proc type p may stay starting
// while its health check fails before `scale --wait` fails: (period +
// timeout) × failure threshold (the time FailureThreshold probes take at
// most, the supervisor's defaults for zero fields) plus healthStartGrace.
// Zero without a health check.
func healthDeadline(p registry.ProcType) time.Duration {
	if p.Health == nil {
		return 0
	}
	period, timeout, n := time.Duration(p.Health.Period), time.Duration(p.Health.Timeout), p.Health.FailureThreshold
	if period <= 0 {
		period = supervisor.DefaultHealthPeriod
	}
	if timeout <= 0 {
		timeout = min(supervisor.DefaultHealthTimeout, period)
	}
	if n <= 0 {
		n = supervisor.DefaultHealthFails
	}
	return (period+timeout)*time.Duration(n) + healthStartGrace
}

// noteHealth records when a starting instance started, and its health
// check's last error; an instance in another state is forgotten.
func (w *scaleWaiter) noteHealth(inst registry.Instance, now time.Time) {
	if inst.State != registry.InstanceStarting {
		delete(w.starting, inst.ID)
		delete(w.health, inst.ID)
		return
	}
	if _, ok := w.starting[inst.ID]; !ok || w.state[inst.ID] != registry.InstanceStarting {
		since := inst.Since
		if since.IsZero() || since.After(now) {
			since = now
		}
		w.starting[inst.ID] = since
	}
	w.health[inst.ID] = inst.Health
}

// healthOverdue returns the failure of an instance that has been starting
// longer than its health deadline with its check failing, while its process
// type has fewer running instances than wanted; next is when
// the next starting instance with a failing check reaches its deadline
// (zero if none).
func (w *scaleWaiter) healthOverdue(now time.Time) (fail error, next time.Time) {
	running := w.running()
	short := map[string]bool{} // process types with fewer running than wanted
	for _, a := range w.want {
		short[a.proc] = running[a.proc] < a.n
	}
	for _, id := range slices.Sorted(maps.Keys(w.starting)) {
		proc, since := w.procOf[id], w.starting[id]
		d := w.healthDeadline[proc]
		if d == 0 || w.health[id] == "" || !short[proc] {
			continue // no check, not failing, or not needed (a scale down)
		}
		at := since.Add(d)
		if now.Before(at) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		return fmt.Errorf("%s/%s/%s: instance %s has been starting for %s, past its health check's deadline of %s ((period + timeout) × failure threshold + %s): %s: %w",
			w.app, w.rev, proc, id, now.Sub(since).Round(time.Second), d, healthStartGrace, w.health[id], errWaitFailed), time.Time{}
	}
	return nil, next
}
