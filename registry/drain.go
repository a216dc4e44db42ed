package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/internal/etcdwatch"
)

// ErrLastHost means a drain would leave no live host to run instances on.
var ErrLastHost = errors.New("registry: no other live host would be left")

// Drain records that a host is being drained: its agent stops claiming
// start tickets, and the reconciler starts a replacement of each of its
// instances elsewhere, then stops the old one once the replacement runs (or
// once the deadline passes).
type Drain struct {
	Host     string    `json:"host"`
	Since    time.Time `json:"since"`
	Deadline time.Time `json:"deadline,omitempty"`
}

func (r *Registry) drainsDir() string           { return r.prefix + "drains/" }
func (r *Registry) drainKey(host string) string { return r.drainsDir() + host }

// Drain starts draining host. The host must be live, and at least one other
// live host that is not draining must remain (ErrLastHost otherwise), so a
// drain never leaves the fleet with nowhere to run. deadline bounds how long
// old instances wait for their replacements (0 = no bound). Draining a
// draining host updates its deadline. The drain record is not bound to the
// host's lease: it survives agent restarts until Undrain.
func (r *Registry) Drain(ctx context.Context, host string, deadline time.Duration) (Drain, error) {
	if err := validName("host", host); err != nil {
		return Drain{}, err
	}
	if deadline < 0 {
		return Drain{}, fmt.Errorf("%w: drain deadline %s is negative", ErrInvalid, deadline)
	}
	what := fmt.Sprintf("registry: drain %q", host)
	var d Drain
	err := retry(ctx, what, func() (bool, error) {
		drains, rev, err := r.drains(ctx)
		if err != nil {
			return false, err
		}
		hosts, err := r.Hosts(ctx)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return false, err
		}
		var self, other *Host
		for i, h := range hosts {
			if h.ID == host {
				self = &hosts[i]
			} else if _, draining := drains[h.ID]; !draining && other == nil {
				other = &hosts[i]
			}
		}
		if self == nil {
			return false, fmt.Errorf("%w: host %q is not a live host", ErrNotFound, host)
		}
		if other == nil {
			return false, fmt.Errorf("drain %q: %w", host, ErrLastHost)
		}
		d = Drain{Host: host, Since: time.Now().UTC()}
		if old, ok := drains[host]; ok {
			d.Since = old.Since
		}
		if deadline > 0 {
			d.Deadline = d.Since.Add(deadline)
		}
		// Checked and written together: no drain began since the drains
		// were read (two concurrent drains of the last two hosts would
		// each see the other's host free), and the other host counted
		// on, and this one, are still live under the leases seen.
		resp, err := r.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(r.drainsDir()), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.LeaseValue(r.hostKey(other.ID)), "=", other.Lease),
			clientv3.Compare(clientv3.LeaseValue(r.hostKey(host)), "=", self.Lease),
		).Then(clientv3.OpPut(r.drainKey(host), encode(d))).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		return resp.Succeeded, nil
	})
	if err != nil {
		return Drain{}, err
	}
	r.log.Info("host draining", "host", host, "deadline", d.Deadline)
	return d, nil
}

// Undrain ends the drain of host; ErrNotFound if it is not draining.
func (r *Registry) Undrain(ctx context.Context, host string) error {
	if err := validName("host", host); err != nil {
		return err
	}
	resp, err := r.cli.Delete(ctx, r.drainKey(host))
	if err != nil {
		return errorf("registry: undrain %q: %w", host, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: host %q is not draining", ErrNotFound, host)
	}
	return nil
}

// Drains returns the hosts being drained, by host id.
func (r *Registry) Drains(ctx context.Context) (map[string]Drain, error) {
	out, _, err := r.drains(ctx)
	return out, err
}

// drains is Drains, with the revision it read at.
func (r *Registry) drains(ctx context.Context) (map[string]Drain, int64, error) {
	resp, err := r.cli.Get(ctx, r.drainsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, errorf("registry: list drains: %w", err)
	}
	out := make(map[string]Drain, len(resp.Kvs))
	var errs []error
	for _, kv := range resp.Kvs {
		d, err := decodeDrain(kv, strings.TrimPrefix(string(kv.Key), r.drainsDir()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[d.Host] = d
	}
	return out, resp.Header.Revision, joinCorrupt(errs)
}

// WatchDrain sends whether host is draining: first the current state, then
// every change, until ctx ends (the channel is then closed). After a watch
// error it re-reads the state, so the last value sent is always current.
func (r *Registry) WatchDrain(ctx context.Context, host string) <-chan bool {
	ch := make(chan bool, 1)
	go func() {
		defer close(ch)
		key := r.drainKey(host)
		pause := backoff.New(rewatchBackoff)
		for ctx.Err() == nil {
			resp, err := r.cli.Get(ctx, key)
			if err != nil {
				if pause.Wait(ctx) != nil {
					return
				}
				continue
			}
			pause.Reset()
			select {
			case ch <- len(resp.Kvs) > 0:
			case <-ctx.Done():
				return
			}
			wctx, cancel := context.WithCancel(ctx)
			wch := r.cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1))
			for wr := range etcdwatch.Responses(ctx, wch) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					select {
					case ch <- ev.Type == clientv3.EventTypePut:
					case <-ctx.Done():
					}
				}
			}
			cancel()
		}
	}()
	return ch
}

// ReplaceInstance starts a replacement of a live instance (for a drain):
// in one transaction, a start ticket for the same app/rev/proc that the old
// instance's host may not claim, the replacement's pending instance (which
// names the old one in Replaces), and the old instance marked ReplacedBy,
// which takes it out of the scale count so the two are not both counted.
func (r *Registry) ReplaceInstance(ctx context.Context, id string) (Ticket, error) {
	var out Ticket
	what := fmt.Sprintf("registry: replace instance %q", id)
	err := retry(ctx, what, func() (bool, error) {
		old, err := r.Instance(ctx, id)
		if err != nil {
			return false, err
		}
		if !old.State.Live() || old.StopTicket != "" {
			return false, errorf("%s: instance is %s: %w", what, old.State, ErrInvalid)
		}
		if old.Host == "" {
			// A pending instance runs nowhere; marking it would also
			// leave its start ticket unclaimable (see claimTxn).
			return false, errorf("%s: instance is not on a host: %w", what, ErrInvalid)
		}
		if old.ReplacedBy != "" {
			return false, errorf("%s: already replaced by %s: %w", what, old.ReplacedBy, ErrExists)
		}
		// The replacement reserves what its process type declares now (the
		// release's, for a released revision), as a start ticket written by
		// Scale would (compared below, so a change of the limits meanwhile
		// makes this try again).
		cmps := []clientv3.Cmp{unchanged(r.instanceKey(old.ID), old.ModRevision)}
		reserve, rc, err := r.procReservation(ctx, old.App, old.Rev, old.Proc)
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		cmps = append(cmps, rc...)
		now := time.Now().UTC()
		t := Ticket{ID: newTicketID(), Op: TicketStart, App: old.App, Rev: old.Rev, Proc: old.Proc,
			Instance: newInstanceID(old.App, old.Proc), Replaces: old.ID, Reserve: reserve, MaxAttempts: 3, Created: now,
			FailedHosts: []string{old.Host}, Reasons: []string{"replacing " + old.ID + " of draining host " + old.Host}}
		in := Instance{ID: t.Instance, App: old.App, Rev: old.Rev, Proc: old.Proc, State: InstancePending,
			Since: now, Ticket: t.ID, Created: now, Replaces: old.ID, Reserve: reserve}
		next := old
		next.ReplacedBy = in.ID
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(
			clientv3.OpPut(r.ticketKey(t.ID), encode(t)),
			clientv3.OpPut(r.instanceKey(in.ID), encode(in)),
			clientv3.OpPut(r.instanceKey(old.ID), encode(next)),
			touch(r.genKey(old.App, old.Rev, old.Proc)),
		).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		out = t
		out.ModRevision = resp.Header.Revision
		return resp.Succeeded, nil
	})
	return out, err
}

// CancelReplacement clears the ReplacedBy mark of instance id (its
// replacement failed), so it counts toward its scale again.
func (r *Registry) CancelReplacement(ctx context.Context, id string) error {
	what := fmt.Sprintf("registry: cancel replacement of %q", id)
	return retry(ctx, what, func() (bool, error) {
		old, err := r.Instance(ctx, id)
		if err != nil {
			return false, err
		}
		if old.ReplacedBy == "" {
			return true, nil
		}
		next := old
		next.ReplacedBy = ""
		resp, err := r.cli.Txn(ctx).If(unchanged(r.instanceKey(old.ID), old.ModRevision)).Then(
			clientv3.OpPut(r.instanceKey(old.ID), encode(next)),
			touch(r.genKey(old.App, old.Rev, old.Proc)),
		).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		return resp.Succeeded, nil
	})
}
