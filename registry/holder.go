package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Release gives up a claimed ticket in one transaction: the claim is
// deleted and the ticket records the attempt, this host and reason. For a
// start ticket the instance goes back to pending, unless it no longer
// waits for a start: one that ended meanwhile is left as it is, and one
// whose stop was requested (the stop ticket goes too, if unclaimed) or
// that a drain replaced exits without having run; the ticket is deleted. When Attempts reaches
// MaxAttempts the ticket is deleted instead; a start ticket's instance then
// fails with reason, a stop ticket's instance counts toward its scale
// again. ErrNotHolder unless this session holds the claim.
func (s *HostSession) Release(ctx context.Context, t Ticket, reason string) error {
	return s.release(ctx, t, reason, true)
}

// Unclaim gives a claimed ticket back without counting an attempt or
// marking this host as failed: for a host that stops (shutdown) before it
// did the work, which it or another host may do later. Otherwise as
// Release: a start ticket's instance goes back to pending, unless it no
// longer waits for a start.
func (s *HostSession) Unclaim(ctx context.Context, t Ticket, reason string) error {
	return s.release(ctx, t, reason, false)
}

// release is Release (attempt true) and Unclaim (false).
func (s *HostSession) release(ctx context.Context, t Ticket, reason string, attempt bool) error {
	if err := validID("ticket id", t.ID); err != nil {
		return err
	}
	r := s.r
	tk, ck := r.ticketKey(t.ID), r.claimKey(t.ID)
	what := fmt.Sprintf("registry: release ticket %s", t.ID)
	return retry(ctx, what, func() (bool, error) {
		snap, err := r.cli.Txn(ctx).Then(clientv3.OpGet(tk), clientv3.OpGet(ck)).Commit()
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		tkv, ckv := first(rangeKvs(snap, 0)), first(rangeKvs(snap, 1))
		if tkv == nil {
			return false, fmt.Errorf("%s: %w (%w)", what, ErrTicketDone, ErrNotFound)
		}
		if ckv == nil || clientv3.LeaseID(ckv.Lease) != s.lease {
			return false, fmt.Errorf("%s: %w", what, ErrNotHolder)
		}
		cur, err := decodeTicket(tkv, t.ID)
		if err != nil {
			return false, err
		}
		if cur.MaxAttempts <= 0 {
			cur.MaxAttempts = 3
		}
		if attempt {
			cur.Attempts++
			cur.FailedHosts = append(cur.FailedHosts, s.id)
			cur.Reasons = append(cur.Reasons, reason)
		}
		cmps := []clientv3.Cmp{unchanged(tk, tkv.ModRevision), s.holderCmp(t.ID)}
		ops := []clientv3.Op{clientv3.OpDelete(ck)}
		final := attempt && cur.Attempts >= cur.MaxAttempts
		var in Instance
		if cur.Op == TicketStart || (final && cur.Op == TicketStop) {
			in, err = r.Instance(ctx, cur.Instance)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return false, err
			}
			if err == nil {
				cmps = append(cmps, unchanged(r.instanceKey(in.ID), in.ModRevision))
			}
		}
		// A start is offered again only for an instance still waiting for
		// it: one that ended meanwhile (a stop ticket on the claimed
		// instance, the reconciler), that is to be stopped or that a
		// drain replaced must not run elsewhere, uncounted.
		retired := cur.Op == TicketStart && err == nil && (retire(in) || in.Host != s.id)
		if final || retired {
			ops = append(ops, clientv3.OpDelete(tk))
		} else {
			ops = append(ops, clientv3.OpPut(tk, encode(cur)))
		}
		if in.ID != "" {
			now := time.Now().UTC()
			switch {
			case retired && in.Host == s.id:
				ops = append(ops, r.retireOps(in, s.id, reason)...)
			case retired:
				// Someone else decided its fate.
			case cur.Op == TicketStop:
				in.StopTicket = ""
				ops = append(ops, clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc)))
			case final:
				in.State, in.Since = InstanceFailed, now
				in.Reason = fmt.Sprintf("start failed %d times, last on %s: %s", cur.Attempts, s.id, reason)
				ops = append(ops, clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc)))
			default:
				in.State, in.Since, in.Host = InstancePending, now, ""
				ops = append(ops, clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc)))
			}
			if cur.Op == TicketStart {
				ops = append(ops, clientv3.OpDelete(r.hostInstanceKey(s.id, in.ID)))
			}
		}
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, s.leaseErr(what, err)
		}
		if resp.Succeeded {
			s.forget(cur.Instance)
			s.log.Info("ticket released", "ticket", t.ID, "attempts", cur.Attempts, "final", final, "reason", reason)
		}
		return resp.Succeeded, nil
	})
}

// Complete finishes a claimed ticket: the ticket and its claim are deleted
// in one transaction. ErrTicketDone if the ticket is gone, ErrNotHolder
// unless this session holds the claim.
func (s *HostSession) Complete(ctx context.Context, t Ticket) error {
	return s.complete(ctx, t, nil)
}

// CompleteWith is Complete plus writing inst (the instance's new state, for
// example running) in the same transaction, which must be indexed under
// this host with this session's lease. inst replaces the stored record
// (start from the Instance Claim returned); its ID and Host are forced to
// the ticket's instance and this host, and an empty App/Rev/Proc is taken
// from the ticket.
func (s *HostSession) CompleteWith(ctx context.Context, t Ticket, inst Instance) error {
	if !inst.State.known() || inst.State == InstancePending || inst.State == InstanceLost {
		return fmt.Errorf("%w: complete ticket %s with instance state %q", ErrInvalid, t.ID, inst.State)
	}
	return s.complete(ctx, t, &inst)
}

func (s *HostSession) complete(ctx context.Context, t Ticket, in *Instance) error {
	if err := validID("ticket id", t.ID); err != nil {
		return err
	}
	r := s.r
	tk, ck := r.ticketKey(t.ID), r.claimKey(t.ID)
	what := fmt.Sprintf("registry: complete ticket %s", t.ID)
	if in != nil {
		in.ID = t.Instance
		if err := validID("instance id", in.ID); err != nil {
			return err
		}
	}
	return retry(ctx, what, func() (bool, error) {
		cmps := []clientv3.Cmp{s.holderCmp(t.ID)}
		ops := []clientv3.Op{clientv3.OpDelete(tk), clientv3.OpDelete(ck)}
		var next Instance
		if in != nil {
			// Read-modify-write, like UpdateInstance: fields the holder does
			// not own (a stop ticket or replacement link written meanwhile)
			// survive, and the generation key is touched only when the
			// instance's counting changes, so completions do not make
			// concurrent Scale calls retry.
			cur, cached, err := s.stored(ctx, in.ID)
			switch {
			case errors.Is(err, ErrNotFound):
				cur = Instance{ID: in.ID, App: t.App, Rev: t.Rev, Proc: t.Proc, Ticket: t.ID, Created: t.Created}
			case err != nil:
				return false, err
			default:
				if err := ValidTransition(cur.State, in.State); err != nil {
					if cached {
						// Refused on the remembered copy, which may be
						// stale: decide on the stored record.
						s.forget(in.ID)
						return false, nil
					}
					return false, fmt.Errorf("%s: %w", what, err)
				}
			}
			cur.Host = s.id
			next = withHolderView(cur, *in)
			ik := r.hostInstanceKey(s.id, in.ID)
			cmps = append(cmps, clientv3.Compare(clientv3.LeaseValue(ik), "=", s.lease),
				unchanged(r.instanceKey(in.ID), cur.ModRevision))
			ops = append(ops, clientv3.OpPut(r.instanceKey(in.ID), encode(next)))
			if next.State.Terminal() {
				ops = append(ops, clientv3.OpDelete(ik))
			}
			if cur.ModRevision == 0 || cur.counted() != next.counted() {
				ops = append(ops, touch(r.genKey(next.App, next.Rev, next.Proc)))
			}
		}
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(ops...).Else(
			clientv3.OpGet(tk, clientv3.WithCountOnly()),
			clientv3.OpGet(ck, clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			return false, s.leaseErr(what, err)
		}
		if !resp.Succeeded {
			if in != nil {
				// The remembered copy may be what failed: read next time.
				s.forget(in.ID)
			}
			if resp.Responses[0].GetResponseRange().Count == 0 {
				return false, fmt.Errorf("%s: %w (%w)", what, ErrTicketDone, ErrNotFound)
			}
			// Ours are the claim and (for a start) the index entry, both on
			// our lease; if so, only the instance changed: read again.
			check := []clientv3.Op{clientv3.OpGet(ck)}
			if in != nil {
				check = append(check, clientv3.OpGet(r.hostInstanceKey(s.id, in.ID)))
			}
			held, herr := r.cli.Txn(ctx).Then(check...).Commit()
			if herr != nil {
				return false, s.leaseErr(what, herr)
			}
			for i := range check {
				kv := first(rangeKvs(held, i))
				if kv == nil || clientv3.LeaseID(kv.Lease) != s.lease {
					return false, fmt.Errorf("%s: %w", what, ErrNotHolder)
				}
			}
			return false, nil
		}
		if in != nil {
			*in = next
			in.ModRevision = resp.Header.Revision
			s.remember(*in)
		}
		return true, nil
	})
}

// withHolderView returns cur with the fields the holder reports taken from
// inst (state, since, port, pid, pid start, restarts, exit code, signal,
// reason); everything else (stop ticket, replacement links, ticket,
// created) keeps its stored value.
func withHolderView(cur, inst Instance) Instance {
	next := cur
	next.State, next.Port, next.PID, next.PIDStart = inst.State, inst.Port, inst.PID, inst.PIDStart
	next.Restarts, next.ExitCode, next.Signal, next.Reason = inst.Restarts, inst.ExitCode, inst.Signal, inst.Reason
	next.Since = inst.Since
	if next.Since.IsZero() {
		next.Since = cur.Since
		if cur.State != inst.State {
			next.Since = time.Now().UTC()
		}
	}
	return next
}

// UpdateInstance writes the holder's view of an instance: state, since,
// port, pid, pid start, restarts, exit code, signal and reason; the other
// fields keep their stored values. The stored instance must name this host
// and not be lost (else ErrNotHolder), and the state change must pass
// ValidTransition (else ErrTransition). The host index entry is rebound to
// this session's lease if it is not on it already (one nested transaction
// in the same request), or deleted when the new state is terminal.
func (s *HostSession) UpdateInstance(ctx context.Context, inst Instance) error {
	if err := validID("instance id", inst.ID); err != nil {
		return err
	}
	if inst.State == InstanceLost {
		// Lost is the reconciler's verdict on a host it no longer hears
		// from (MarkLost), never the holder's.
		return fmt.Errorf("%w: instance %q: the holder does not set state lost", ErrInvalid, inst.ID)
	}
	what := fmt.Sprintf("registry: update instance %q", inst.ID)
	return retry(ctx, what, func() (bool, error) {
		cur, cached, err := s.stored(ctx, inst.ID)
		if err != nil {
			return false, err
		}
		if cached {
			ok, err := s.updateFrom(ctx, what, cur, inst)
			if ok && err == nil {
				return true, nil
			}
			// The remembered copy is stale (or the update is refused on
			// it): decide on the stored record, read now.
			s.forget(inst.ID)
			if cur, err = s.r.Instance(ctx, inst.ID); err != nil {
				return false, err
			}
		}
		return s.updateFrom(ctx, what, cur, inst)
	})
}

// updateFrom is one attempt of UpdateInstance on cur, the record as read
// or remembered: it checks that this host may make the change and writes
// it if the record is still at cur.ModRevision (false if not).
func (s *HostSession) updateFrom(ctx context.Context, what string, cur, inst Instance) (bool, error) {
	r := s.r
	if cur.Host != s.id || cur.State == InstanceLost {
		return false, fmt.Errorf("%s: instance is %s on %q: %w", what, cur.State, cur.Host, ErrNotHolder)
	}
	if err := ValidTransition(cur.State, inst.State); err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	next := withHolderView(cur, inst)
	ik := r.hostInstanceKey(s.id, cur.ID)
	ops := []clientv3.Op{clientv3.OpPut(r.instanceKey(cur.ID), encode(next))}
	if next.State.Terminal() {
		ops = append(ops, clientv3.OpDelete(ik))
	} else {
		// The index entry is written only when it is not on this
		// session's lease already (after a new lease, before Adopt):
		// re-putting it on every update would cost a put and send an
		// event to every watcher of hosts/ for nothing.
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(ik), "=", s.lease)}, nil,
			[]clientv3.Op{clientv3.OpPut(ik, "", clientv3.WithLease(s.lease))}))
	}
	if cur.counted() != next.counted() {
		ops = append(ops, touch(r.genKey(cur.App, cur.Rev, cur.Proc)))
	}
	resp, err := r.cli.Txn(ctx).If(unchanged(r.instanceKey(cur.ID), cur.ModRevision)).Then(ops...).Commit()
	if err != nil {
		return false, s.leaseErr(what, err)
	}
	if !resp.Succeeded {
		return false, nil
	}
	next.ModRevision = resp.Header.Revision
	s.remember(next)
	if cur.State != next.State {
		s.log.Info("instance state changed", "instance", cur.ID, "from", cur.State, "to", next.State)
	}
	return true, nil
}

// Adopt rebinds an instance to this session after the agent reconnects with
// a new lease: if the stored instance still names this host and is neither
// terminal nor lost, its host index entry is rewritten with this lease in
// one transaction. ErrNotHolder if it was replaced or lost meanwhile.
func (s *HostSession) Adopt(ctx context.Context, id string) (Instance, error) {
	if err := validID("instance id", id); err != nil {
		return Instance{}, err
	}
	r := s.r
	what := fmt.Sprintf("registry: adopt instance %q", id)
	var out Instance
	err := retry(ctx, what, func() (bool, error) {
		cur, err := r.Instance(ctx, id)
		if err != nil {
			return false, err
		}
		if cur.Host != s.id || cur.State.Terminal() {
			return false, fmt.Errorf("%s: instance is %s on %q: %w", what, cur.State, cur.Host, ErrNotHolder)
		}
		resp, err := r.cli.Txn(ctx).If(unchanged(r.instanceKey(id), cur.ModRevision)).
			Then(clientv3.OpPut(r.hostInstanceKey(s.id, id), "", clientv3.WithLease(s.lease))).Commit()
		if err != nil {
			return false, s.leaseErr(what, err)
		}
		out = cur
		if resp.Succeeded {
			s.remember(cur)
		}
		return resp.Succeeded, nil
	})
	return out, err
}

// retire reports whether a start ticket's instance no longer waits for
// the start: it ended, its stop was requested, or a drain replaced it.
func retire(in Instance) bool {
	return in.State.Terminal() || in.StopTicket != "" || in.ReplacedBy != ""
}

// retireOps ends instance in, whose start ticket the caller deletes in the
// same transaction because retire(in): if it has not ended, it exits
// without having run, and an unclaimed stop ticket for it goes too (a
// claimed one's holder finds the instance exited and completes it). host
// and reason say whose start ended how.
func (r *Registry) retireOps(in Instance, host, reason string) []clientv3.Op {
	if in.State.Terminal() {
		return nil
	}
	why := "its stop was requested"
	if in.StopTicket == "" {
		why = "it was replaced by " + in.ReplacedBy
	}
	in.State, in.Since = InstanceExited, time.Now().UTC()
	in.Reason = fmt.Sprintf("not started: %s before the start on %s ended (%s)", why, host, reason)
	ops := []clientv3.Op{clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc))}
	if in.StopTicket != "" {
		ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{absent(r.claimKey(in.StopTicket))},
			[]clientv3.Op{clientv3.OpDelete(r.ticketKey(in.StopTicket))}, nil))
	}
	return ops
}
