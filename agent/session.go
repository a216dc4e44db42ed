package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// reconnectBackoff paces the session loop's attempts to register while
// the registry is unreachable.
var reconnectBackoff = backoff.Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second, Jitter: backoff.HalfJitter}

// sessionLoop keeps a registry session up until ctx ends: register, adopt,
// serve tickets; on lease loss start over with a new lease.
func (a *Agent) sessionLoop(ctx context.Context) error {
	retry := backoff.New(reconnectBackoff)
	for {
		s, err := a.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, registry.ErrPermission) {
				// Not an outage: a read-only role stays read-only.
				return fmt.Errorf("agent: cannot register host %s: %w", a.cfg.HostID, err)
			}
			a.noteDisconnected(ctx)
			a.log.Warn("registry unreachable; instances keep running", "error", err)
			if retry.Wait(ctx) != nil {
				return nil
			}
			continue
		}
		retry.Reset()
		a.log.Info("registry session up", "lease", fmt.Sprintf("%x", int64(s.Lease())))
		// Adopt before the state writer sees the session: a write of an
		// instance not yet re-bound to the new lease would look replaced.
		a.adopter().adoptAll(ctx, s)
		a.sess.set(s)
		a.registrar.SetLease(s.Lease())
		a.syncEndpoints(ctx, s)
		a.readyOnce.Do(a.cfg.Ready)

		err = a.serve(ctx, s)
		if ctx.Err() != nil {
			return nil // Run flushes states with this session, then ends it
		}
		s.Orphan()
		a.sess.set(nil)
		a.metrics.leaseLost.Inc()
		a.log.Warn("registry session lost; instances keep running", "error", err)
	}
}

// register creates the host session. If the host key is still held by the
// lease this agent persisted before it stopped (a restart inside the TTL),
// that lease is revoked first: it is ours, and the instances it indexed are
// adopted again under the new lease.
func (a *Agent) register(ctx context.Context) (*registry.HostSession, error) {
	host := a.status.record()
	s, err := a.reg.RegisterHost(ctx, host, a.cfg.TTL)
	if errors.Is(err, registry.ErrExists) {
		old, ok := a.lease.load()
		h, herr := a.reg.Host(ctx, a.cfg.HostID)
		if herr != nil || !ok || h.Lease != old {
			return nil, fmt.Errorf("host %q is registered by another live agent (lease %x): %w", a.cfg.HostID, h.Lease, err)
		}
		a.log.Info("revoking this host's previous lease", "lease", fmt.Sprintf("%x", old))
		if _, rerr := a.reg.Client().Revoke(ctx, clientv3.LeaseID(old)); rerr != nil {
			return nil, fmt.Errorf("revoke previous lease: %w", rerr)
		}
		s, err = a.reg.RegisterHost(ctx, host, a.cfg.TTL)
	}
	if err != nil {
		return nil, err
	}
	a.lease.save(int64(s.Lease()))
	return s, nil
}

// noteDisconnected applies StopAfterDisconnect.
func (a *Agent) noteDisconnected(ctx context.Context) {
	since := a.sess.disconnected(time.Now())
	if a.cfg.StopAfterDisconnect > 0 && time.Since(since) > a.cfg.StopAfterDisconnect {
		live := 0
		for _, st := range a.sup.List() {
			if !st.State.Terminal() {
				live++
			}
		}
		if live > 0 {
			a.log.Warn("registry unreachable past stop_after_disconnect; stopping instances", "after", a.cfg.StopAfterDisconnect, "instances", live)
			a.stopAll(ctx, "registry unreachable past stop_after_disconnect")
		}
	}
}

// stopAll stops every live instance in parallel, bounded by ctx.
func (a *Agent) stopAll(ctx context.Context, reason string) {
	var wg sync.WaitGroup
	for _, st := range a.sup.List() {
		if st.State.Terminal() {
			continue
		}
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			if _, err := a.sup.Stop(ctx, id); err != nil && !errors.Is(err, supervisor.ErrNotFound) {
				a.log.Warn("stop instance", "instance", id, "reason", reason, "error", err)
			}
		}(st.ID)
	}
	wg.Wait()
}
