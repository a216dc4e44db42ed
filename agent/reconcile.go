package agent

import (
	"context"
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
//   - every scale entry that drifted (its desired count is not the
//     instances counted in the pass's snapshot), waits for capacity or
//     has a stored status is re-applied with registry.RescaleIn, which
//     counts again and creates start tickets for missing instances
//     (exited, failed, lost) and stop tickets for extra ones in one
//     transaction, and writes nothing when there is no drift; entries in
//     place cost no request; start tickets only up to what the
//     live hosts can take (registry.Fleet, read once per pass), so a
//     scale far above the fleet's capacity writes no more tickets than
//     can run, and the rest waits with its reason in a
//     registry.ScaleStatus (visor ps, tickets, scale --wait show it);
//   - a proc type whose replacements keep failing is retried with
//     exponential backoff (up to 5 minutes) and reported, not hot-looped;
//   - terminal instances older than an hour are deleted;
//   - active deployments take their next step (deploy.go).
//
// A pass reads a snapshot, computes a plan from it (a pure function, table
// tested without etcd) and applies the plan: reconcile_plan.go and
// reconcile_apply.go.
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
	mem memory
}

// reconcileConfig is what the reconciler takes from the agent's Config.
type reconcileConfig struct {
	interval  time.Duration // Config.ReconcileInterval: the period of the full pass
	lostGrace time.Duration // Config.LostGrace
}

// newReconciler returns the state of a newly elected leader.
func newReconciler(reg *registry.Registry, log hclog.Logger, cfg reconcileConfig, bad *badRecords) *reconciler {
	return &reconciler{reg: reg, log: log, cfg: cfg, bad: bad, mem: newMemory()}
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
				if _, seen := r.mem.hostGone[ev.Host]; !seen {
					r.mem.hostGone[ev.Host] = time.Now()
				}
			case registry.HostJoined:
				delete(r.mem.hostGone, ev.Host)
			case registry.ScaleChanged, registry.InstanceChanged, registry.TicketReleased, registry.InstanceDeleted,
				registry.HostDrained, registry.HostUndrained, registry.DeployChanged:
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

// leaderOf returns the current reconciler leader's host id, or "".
func (a *Agent) leaderOf(ctx context.Context) string {
	resp, err := a.reg.Client().Get(ctx, a.reg.Prefix()+"leader/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}
