package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/visorhq/visor/registry"
)

// The reconciler runs on one agent at a time, elected through etcd
// (concurrency.Election under <prefix>leader, campaigning with the host
// lease, so a dead leader's candidacy ends with its lease). It makes the
// desired scale true:
//
//   - instances of hosts whose lease has been gone longer than LostGrace
//     are marked lost (never earlier: a store outage or a short partition
//     is not host death, and those hosts keep their instances);
//   - every scale entry is re-applied with registry.RescaleIn, which
//     creates start tickets for missing instances (exited, failed, lost)
//     and stop tickets for extra ones in one transaction, and writes
//     nothing when there is no drift; start tickets only up to what the
//     live hosts can take (registry.Fleet, read once per pass), so a
//     scale far above the fleet's capacity writes no more tickets than
//     can run, and the rest waits with its reason in a
//     registry.ScaleStatus (visor ps, tickets, scale --wait show it);
//   - a proc type whose replacements keep failing is retried with
//     exponential backoff (up to 5 minutes) and reported, not hot-looped;
//   - terminal instances older than an hour are deleted.
//
// It acts on registry events (debounced) and a slow periodic full pass, and
// does nothing while it cannot read the registry. Records that do not
// decode are skipped (a host whose record is bad still counts as alive)
// and reported once each (badRecords), never a reason to stop.

const (
	reconcileDebounce = 200 * time.Millisecond
	gcAge             = time.Hour
	maxFixBackoff     = 5 * time.Minute
)

// reconciler is the leader's state; it lives only while leading.
type reconciler struct {
	reg *registry.Registry
	log hclog.Logger
	cfg reconcileConfig
	bad *badRecords // reports the records a pass skipped

	hostGone map[string]time.Time // host -> when its lease was first seen gone
	fixes    map[string]*fixState // scale key -> backoff of repeated repairs
	stuck    map[string]bool      // ticket ids reported as having no eligible host
	waiting  map[string]string    // scale key -> last reported reason it waits for capacity
}

// reconcileConfig is what the reconciler takes from the agent's Config.
type reconcileConfig struct {
	interval  time.Duration // Config.ReconcileInterval: the period of the full pass
	lostGrace time.Duration // Config.LostGrace
}

// newReconciler returns the state of a newly elected leader.
func newReconciler(reg *registry.Registry, log hclog.Logger, cfg reconcileConfig, bad *badRecords) *reconciler {
	return &reconciler{reg: reg, log: log, cfg: cfg, bad: bad, hostGone: map[string]time.Time{},
		fixes: map[string]*fixState{}, stuck: map[string]bool{}, waiting: map[string]string{}}
}

// fixState tracks repeated repairs of one scale entry.
type fixState struct {
	next  time.Time     // no repair before this
	delay time.Duration // next backoff step
	last  time.Time     // last repair
}

// lead campaigns for leadership with the host lease and runs the reconciler while
// leader, until ctx ends or the session is lost.
func (a *Agent) lead(ctx context.Context, lease int64) {
	// After a lease lost in a partition, a cancelled candidacy must not
	// hold the session loop (and re-registering) until the network heals
	// and the stalled connection recovers: those seconds count against the
	// lost-host grace (test/fault). Two things in Campaign would:
	//   - it cleans up with Resign(client.Ctx()), which blocks until etcd
	//     answers: a client view whose context ends with ctx bounds that;
	//   - it waits for the previous candidates' keys to go by ranging over
	//     a watch channel, which clientv3 closes on cancel only once the
	//     watch stream is up again (11 s measured): the view gets a
	//     watcher of its own, closed as soon as ctx ends, which closes its
	//     channels at once.
	// Never Close the view itself: it shares the client's KV and lease
	// streams.
	cli := a.reg.Client()
	watcher := clientv3.NewWatcher(cli)
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = watcher.Close()
		close(closed)
	})
	defer func() {
		if stop() {
			_ = watcher.Close()
		} else {
			<-closed // the AfterFunc's Close: wait for it
		}
	}()
	view := clientv3.NewCtxClient(ctx)
	view.Cluster, view.KV, view.Lease, view.Watcher, view.Auth, view.Maintenance =
		cli.Cluster, cli.KV, cli.Lease, watcher, cli.Auth, cli.Maintenance
	sess, err := concurrency.NewSession(view, concurrency.WithLease(clientv3.LeaseID(lease)), concurrency.WithContext(ctx))
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("election session", "error", err)
		}
		return
	}
	// Orphan, never Close: Close would revoke the host's own lease.
	defer sess.Orphan()
	el := concurrency.NewElection(sess, a.reg.Prefix()+"leader")
	if err := el.Campaign(ctx, a.cfg.HostID); err != nil {
		if ctx.Err() == nil {
			a.log.Warn("campaign for reconciler leadership", "error", err)
		}
		return
	}
	a.metrics.leader.Set(1)
	defer a.metrics.leader.Set(0)
	a.log.Info("elected reconciler leader")
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = el.Resign(rctx)
	}()
	r := newReconciler(a.reg, a.log, reconcileConfig{interval: a.cfg.ReconcileInterval, lostGrace: a.cfg.LostGrace},
		a.metrics.badRecords)
	defer a.metrics.badRecords.forget("reconciler/")
	r.run(ctx, sess.Done())
}

// run reconciles on events and on a timer until ctx ends or lost closes.
func (r *reconciler) run(ctx context.Context, lost <-chan struct{}) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := r.reg.WatchEvents(wctx, 0)
	timer := time.NewTimer(0) // a first pass at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lost:
			if ctx.Err() == nil {
				r.log.Warn("reconciler leadership lost with the session")
			}
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			r.log.Trace("reconciler event", "type", string(ev.Type), "host", ev.Host, "error", ev.Err)
			if ev.Err != nil {
				continue
			}
			switch ev.Type {
			case registry.HostLeft:
				if _, seen := r.hostGone[ev.Host]; !seen {
					r.hostGone[ev.Host] = time.Now()
				}
			case registry.HostJoined:
				delete(r.hostGone, ev.Host)
			case registry.ScaleChanged, registry.InstanceChanged, registry.TicketReleased, registry.InstanceDeleted,
				registry.HostDrained, registry.HostUndrained:
			default:
				continue
			}
			// Debounce: bursts of events make one pass.
			resetTimer(timer, reconcileDebounce)
		case <-timer.C:
			next := r.pass(ctx, time.Now())
			resetTimer(timer, next)
		}
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

// pass runs one full reconciliation and returns when the next one is due.
func (r *reconciler) pass(ctx context.Context, now time.Time) time.Duration {
	next := r.cfg.interval
	// Records that do not decode are skipped and reported (r.skipped),
	// never a reason to stop: one bad key must not halt the fleet.
	hosts, err := r.reg.Hosts(ctx)
	badHosts, err := r.skipped("hosts", err)
	if err != nil && ctx.Err() != nil {
		return next
	}
	if err != nil {
		r.log.Warn("reconcile: cannot read hosts; doing nothing", "error", err)
		return min(next, 2*time.Second)
	}
	insts, err := r.reg.Instances(ctx)
	if _, err = r.skipped("instances", err); err != nil {
		r.log.Warn("reconcile: cannot read instances; doing nothing", "error", err)
		return min(next, 2*time.Second)
	}
	r.log.Debug("reconcile pass", "hosts", len(hosts), "instances", len(insts), "gone", len(r.hostGone))
	alive := map[string]bool{}
	for _, h := range hosts {
		alive[h.ID] = true
		delete(r.hostGone, h.ID)
	}
	for _, b := range badHosts {
		// Its key exists, so (bound to a lease or not) its host is not
		// known to be gone: its instances are not lost for that.
		if id, ok := strings.CutPrefix(b.Key, r.reg.Prefix()+"hosts/"); ok && b.Kind == registry.KindHost {
			alive[id] = true
			delete(r.hostGone, id)
		}
	}

	// 1. Hosts gone past the grace: their instances are lost, a host's
	// worth in a few transactions (step 3 then replaces them).
	lost := map[string][]registry.Instance{}
	for _, in := range insts {
		if in.Host == "" || alive[in.Host] || in.State.Terminal() || in.State == registry.InstancePending || in.State == registry.InstanceClaimed {
			continue
		}
		gone, seen := r.hostGone[in.Host]
		if !seen {
			r.hostGone[in.Host] = now
			gone = now
		}
		if wait := r.cfg.lostGrace - now.Sub(gone); wait > 0 {
			next = min(next, wait+50*time.Millisecond)
			continue
		}
		lost[in.Host] = append(lost[in.Host], in)
	}
	for host, ins := range lost {
		reason := fmt.Sprintf("host %s gone for %s", host, now.Sub(r.hostGone[host]).Round(time.Second))
		n, err := r.reg.MarkAllLost(ctx, ins, reason)
		if err != nil {
			r.log.Warn("mark instances lost", "host", host, "error", err)
		}
		r.log.Info("instances lost", "host", host, "count", n, "reason", reason)
	}

	// 2. Drains: replace, then stop.
	if wait := r.drain(ctx, now, insts); wait > 0 {
		next = min(next, wait)
	}

	// 3. Re-apply every desired scale (no write when nothing drifted).
	scales, err := r.reg.Scales(ctx, "")
	if _, err = r.skipped("scales", err); err != nil {
		r.log.Warn("reconcile: cannot read scales", "error", err)
		return min(next, 2*time.Second)
	}
	fleet := registry.NewFleet(hosts, insts)
	for _, sc := range scales {
		key := sc.App + "/" + sc.Rev + "/" + sc.Proc
		f := r.fixes[key]
		if f != nil && now.Before(f.next) {
			next = min(next, f.next.Sub(now))
			continue
		}
		// Rescale re-applies the stored count inside its own transaction:
		// a user's scale change since the list above is never reverted.
		res, err := r.reg.RescaleIn(ctx, sc.App, sc.Rev, sc.Proc, &fleet)
		if err != nil {
			r.log.Warn("reconcile scale", "scale", key, "error", err)
			continue
		}
		_, wasWaiting := r.waiting[key]
		switch {
		case res.Waiting > 0 && r.waiting[key] != res.Reason:
			r.waiting[key] = res.Reason
			r.log.Info("reconcile: instances wait for capacity", "scale", key, "desired", res.Desired,
				"waiting", res.Waiting, "reason", res.Reason)
		case res.Waiting == 0 && wasWaiting:
			delete(r.waiting, key)
			r.log.Info("reconcile: every instance admitted", "scale", key, "desired", res.Desired)
		}
		if res.Waiting > 0 || wasWaiting {
			// Tickets admitted as slots free up are not failing
			// replacements: no backoff.
			continue
		}
		if len(res.Started)+len(res.Stopped)+len(res.Cancelled) == 0 {
			if f != nil && now.Sub(f.last) > maxFixBackoff {
				delete(r.fixes, key) // stable again
			}
			continue
		}
		r.log.Info("reconcile: repaired drift", "scale", key, "desired", res.Desired,
			"started", len(res.Started), "stopped", len(res.Stopped), "cancelled", len(res.Cancelled))
		// Repairs that keep coming back mean replacements keep failing:
		// back off instead of hot-looping.
		if f == nil {
			f = &fixState{delay: time.Second}
			r.fixes[key] = f
		} else if now.Sub(f.last) < 2*f.delay {
			f.delay = min(2*f.delay, maxFixBackoff)
			r.log.Warn("reconcile: replacements keep failing; backing off", "scale", key, "retry_in", f.delay)
		}
		f.last = now
		f.next = now.Add(f.delay)
	}

	// 4. Tickets no live host may take are reported once, not retried.
	ts, err := r.reg.Tickets(ctx)
	if _, err := r.skipped("tickets", err); err == nil {
		for _, t := range ts {
			if t.Holder != "" || r.stuck[t.ID] || len(t.FailedHosts) == 0 {
				continue
			}
			if eligibleHosts(t, hosts) == 0 {
				r.stuck[t.ID] = true
				r.log.Warn("ticket has no eligible host", "ticket", t.ID, "app", t.App, "proc", t.Proc,
					"failed_hosts", t.FailedHosts, "reasons", t.Reasons)
			}
		}
	}

	// 5. Forget old terminal instances.
	for _, in := range insts {
		if in.State.Terminal() && now.Sub(in.Since) > gcAge {
			if err := r.reg.DeleteInstance(ctx, in.ID); err != nil && !errors.Is(err, registry.ErrNotFound) {
				r.log.Debug("gc instance", "instance", in.ID, "error", err)
			}
		}
	}
	return max(next, 10*time.Millisecond)
}

// drain moves the live instances of draining hosts: each gets a
// replacement (a start ticket the draining host may not claim, the old one
// no longer counted), and once the replacement runs, or the drain's
// deadline passes, a stop ticket for the old one. A replacement that ended
// without running is given up, and the next pass tries again. It returns
// how soon a deadline needs another pass (0: none pending).
func (r *reconciler) drain(ctx context.Context, now time.Time, insts []registry.Instance) time.Duration {
	drains, err := r.reg.Drains(ctx)
	if _, err = r.skipped("drains", err); err != nil || len(drains) == 0 {
		return 0
	}
	byID := make(map[string]registry.Instance, len(insts))
	for _, in := range insts {
		byID[in.ID] = in
	}
	var next time.Duration
	for _, in := range insts {
		d, draining := drains[in.Host]
		if !draining || !in.State.Live() || in.StopTicket != "" {
			continue
		}
		if in.ReplacedBy == "" {
			if _, err := r.reg.ReplaceInstance(ctx, in.ID); err != nil {
				r.log.Warn("drain: replace instance", "instance", in.ID, "host", in.Host, "error", err)
			} else {
				r.log.Info("drain: replacing instance", "instance", in.ID, "host", in.Host)
			}
			continue
		}
		rep, ok := byID[in.ReplacedBy]
		late := !d.Deadline.IsZero() && !now.Before(d.Deadline)
		switch {
		case ok && rep.State == registry.InstanceRunning, late:
			_, err := r.reg.CreateTicket(ctx, registry.Ticket{Op: registry.TicketStop, App: in.App, Rev: in.Rev,
				Proc: in.Proc, Instance: in.ID, Host: in.Host})
			if err != nil && !errors.Is(err, registry.ErrExists) {
				r.log.Warn("drain: stop old instance", "instance", in.ID, "error", err)
				continue
			}
			r.log.Info("drain: stopping old instance", "instance", in.ID, "host", in.Host,
				"replacement", in.ReplacedBy, "deadline_passed", late)
		case !ok || rep.State.Terminal():
			if err := r.reg.CancelReplacement(ctx, in.ID); err != nil {
				r.log.Warn("drain: give up replacement", "instance", in.ID, "error", err)
			}
		default:
			if !d.Deadline.IsZero() {
				wait := d.Deadline.Sub(now) + 50*time.Millisecond
				if next == 0 || wait < next {
					next = wait
				}
			}
		}
	}
	return next
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

// leaderOf returns the current reconciler leader's host id, or "".
func (a *Agent) leaderOf(ctx context.Context) string {
	resp, err := a.reg.Client().Get(ctx, a.reg.Prefix()+"leader/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}
