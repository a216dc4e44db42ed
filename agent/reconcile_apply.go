package agent

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/visorhq/visor/registry"
)

// pass runs one full reconciliation (read, plan, apply: see
// reconcile_plan.go) and returns when the next one is due.
func (r *reconciler) pass(ctx context.Context, now time.Time) time.Duration {
	s, wait, ok := r.readSnapshot(ctx, now)
	if !ok {
		return wait
	}
	r.log.Debug("reconcile pass", "hosts", len(s.hosts), "instances", len(s.instances), "gone", len(r.mem.hostGone))
	p := planPass(s, r.mem, r.cfg)
	r.apply(ctx, s, p)
	return max(p.next, 10*time.Millisecond)
}

// readSnapshot reads what a pass decides on. Records that do not decode
// are skipped and reported (r.skipped), never a reason to stop: one bad
// key must not halt the fleet. ok is false when the hosts or the
// instances cannot be read: the pass then does nothing, and wait says
// when to try again.
func (r *reconciler) readSnapshot(ctx context.Context, now time.Time) (s snapshot, wait time.Duration, ok bool) {
	s.now = now
	retry := min(r.cfg.interval, 2*time.Second)
	hosts, err := r.reg.Hosts(ctx)
	badHosts, err := r.skipped("hosts", err)
	if err != nil && ctx.Err() != nil {
		return s, r.cfg.interval, false
	}
	if err != nil {
		r.log.Warn("reconcile: cannot read hosts; doing nothing", "error", err)
		return s, retry, false
	}
	s.hosts = hosts
	for _, b := range badHosts {
		if id, ok := strings.CutPrefix(b.Key, r.reg.Prefix()+"hosts/"); ok && b.Kind == registry.KindHost {
			s.badHosts = append(s.badHosts, id)
		}
	}
	insts, err := r.reg.Instances(ctx)
	if _, err = r.skipped("instances", err); err != nil {
		r.log.Warn("reconcile: cannot read instances; doing nothing", "error", err)
		return s, retry, false
	}
	s.instances = insts
	if drains, err := r.reg.Drains(ctx); r.noError("drains", err) {
		s.drains = drains
	}
	scales, err := r.reg.Scales(ctx, "")
	if _, err = r.skipped("scales", err); err != nil {
		r.log.Warn("reconcile: cannot read scales", "error", err)
		return s, 0, true
	}
	s.scales, s.scalesOK = scales, true
	// A status that does not decode is rewritten by the RescaleIn of its
	// scale: statuses count as unread then, and every scale is re-applied.
	if sts, err := r.reg.ScaleStatuses(ctx, ""); err == nil {
		s.statuses, s.statusesOK = make(map[string]bool, len(sts)), true
		for _, st := range sts {
			s.statuses[scaleKey(st.App, st.Rev, st.Proc)] = true
		}
	}
	ts, err := r.reg.Tickets(ctx)
	s.tickets, s.ticketsOK = ts, r.noError("tickets", err)
	ds, err := r.reg.ActiveDeployments(ctx)
	s.deploys, s.deploysOK = ds, r.noError("deployments", err)
	return s, 0, true
}

// apply carries out p, made from s. Each step is one registry call (one
// or, for a host's worth of lost instances or a scale's worth of tickets,
// a few transactions); a step that fails is logged and the next pass,
// planned from a new snapshot, tries again.
func (r *reconciler) apply(ctx context.Context, s snapshot, p plan) {
	r.mem.hostGone = p.hostGone
	for _, l := range p.lost {
		n, err := r.reg.MarkAllLost(ctx, l.instances, l.reason)
		if err != nil {
			r.log.Warn("mark instances lost", "host", l.host, "error", err)
		}
		r.log.Info("instances lost", "host", l.host, "count", n, "reason", l.reason)
	}
	for _, d := range p.drain {
		r.applyDrain(ctx, d)
	}
	if len(p.rescale) > 0 {
		// Read once per pass: RescaleIn counts the tickets it writes in
		// it, so later scales see the room the earlier ones took.
		fleet := registry.NewFleet(s.hosts, s.instances)
		for _, rs := range p.rescale {
			r.applyRescale(ctx, rs, &fleet, s.now)
		}
	}
	for _, key := range p.stable {
		delete(r.mem.fixes, key)
	}
	// Tickets no live host may take are reported once, not retried.
	for _, t := range p.stuck {
		r.mem.stuck[t.ID] = true
		r.log.Warn("ticket has no eligible host", "ticket", t.ID, "app", t.App, "proc", t.Proc,
			"failed_hosts", t.FailedHosts, "reasons", t.Reasons)
	}
	r.applyDeploys(ctx, p.deploys)
	for _, id := range p.gc {
		if err := r.reg.DeleteInstance(ctx, id); err != nil && !errors.Is(err, registry.ErrNotFound) {
			r.log.Debug("gc instance", "instance", id, "error", err)
		}
	}
}

// applyDrain carries out one drain step.
func (r *reconciler) applyDrain(ctx context.Context, d drainStep) {
	in := d.in
	switch d.op {
	case drainReplace:
		if _, err := r.reg.ReplaceInstance(ctx, in.ID); err != nil {
			r.log.Warn("drain: replace instance", "instance", in.ID, "host", in.Host, "error", err)
			return
		}
		r.log.Info("drain: replacing instance", "instance", in.ID, "host", in.Host)
	case drainStop:
		_, err := r.reg.CreateTicket(ctx, registry.Ticket{Op: registry.TicketStop, App: in.App, Rev: in.Rev,
			Proc: in.Proc, Instance: in.ID, Host: in.Host})
		if err != nil && !errors.Is(err, registry.ErrExists) {
			r.log.Warn("drain: stop old instance", "instance", in.ID, "error", err)
			return
		}
		r.log.Info("drain: stopping old instance", "instance", in.ID, "host", in.Host,
			"replacement", in.ReplacedBy, "deadline_passed", d.late)
	case drainCancel:
		if err := r.reg.CancelReplacement(ctx, in.ID); err != nil {
			r.log.Warn("drain: give up replacement", "instance", in.ID, "error", err)
		}
	}
}

// applyRescale re-applies one scale entry. RescaleIn re-reads the stored
// count inside its own transaction: a user's scale change since the
// snapshot is never reverted.
func (r *reconciler) applyRescale(ctx context.Context, rs rescale, fleet *registry.Fleet, now time.Time) {
	sc := rs.entry
	key := scaleKey(sc.App, sc.Rev, sc.Proc)
	res, err := r.reg.RescaleIn(ctx, sc.App, sc.Rev, sc.Proc, fleet)
	if err != nil {
		r.log.Warn("reconcile scale", "scale", key, "error", err)
		return
	}
	out := r.mem.rescaled(key, res, now)
	switch out {
	case rescaleWaits:
		r.log.Info("reconcile: instances wait for capacity", "scale", key, "desired", res.Desired,
			"waiting", res.Waiting, "reason", res.Reason)
	case rescaleAdmitted:
		r.log.Info("reconcile: every instance admitted", "scale", key, "desired", res.Desired)
	case rescaleRepaired, rescaleBacksOff:
		r.log.Info("reconcile: repaired drift", "scale", key, "desired", res.Desired, "drift", rs.drift,
			"started", len(res.Started), "stopped", len(res.Stopped), "cancelled", len(res.Cancelled))
		if out == rescaleBacksOff {
			f := r.mem.fixes[key]
			r.log.Warn("reconcile: replacements keep failing; backing off", "scale", key, "retry_in", f.delay)
		}
	}
}

// skipped reports the records a listing of what skipped (see
// registry.Skipped) and returns them with the listing's other error.
func (r *reconciler) skipped(what string, err error) (registry.BadRecords, error) {
	bad, err := registry.Skipped(err)
	if err == nil {
		r.bad.observe("reconciler/"+what, bad)
	}
	return bad, err
}

// noError reports whether a listing of what read (skipping and reporting
// records that do not decode).
func (r *reconciler) noError(what string, err error) bool {
	_, err = r.skipped(what, err)
	return err == nil
}

// eligibleHosts counts live hosts that may claim t.
func eligibleHosts(t registry.Ticket, hosts []registry.Host) int {
	n := 0
	for _, h := range hosts {
		if t.Excludes(h.ID) || h.Draining || (t.Host != "" && t.Host != h.ID) {
			continue
		}
		n++
	}
	return n
}
