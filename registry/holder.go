package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Release gives up a claimed ticket in one transaction: the claim is
// deleted and the ticket records the attempt, this host and reason. For a
// start ticket the instance goes back to pending, unless it no longer
// waits for a start: one that ended meanwhile is left as it is, and one
// whose stop was requested (the stop ticket goes too, if unclaimed) or
// that a drain replaced exits without having run; the ticket is deleted.
// When Attempts reaches MaxAttempts the ticket is deleted instead; a start
// ticket's instance then fails with reason, a stop ticket's instance
// counts toward its scale again. ErrNotHolder unless this session holds
// the claim; ErrTransition (nothing written) when the start's instance is
// already past claimed on this host, its process handed over: such a start
// completes instead.
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

// release is Release (attempt true) and Unclaim (false): releaseTxn builds
// the transaction on the ticket as read, releaseFailed says why one did
// not go through, and a release that only met a change is built again.
func (s *HostSession) release(ctx context.Context, t Ticket, reason string, attempt bool) error {
	if err := validID("ticket id", t.ID); err != nil {
		return err
	}
	what := fmt.Sprintf("registry: release ticket %s", t.ID)
	return retry(ctx, what, func() (bool, error) {
		c, err := s.releaseTxn(ctx, what, t.ID, reason, attempt)
		if err != nil {
			return false, err
		}
		resp, err := s.commit(ctx, what, c.txn)
		if err != nil {
			return false, err
		}
		if !resp.Succeeded {
			return false, s.releaseFailed(what, first(rangeKvs(resp, 0)), first(rangeKvs(resp, 1)))
		}
		s.forget(c.ticket.Instance)
		s.log.Info("ticket released", "ticket", t.ID, "attempts", c.ticket.Attempts, "final", c.final, "reason", reason)
		return true, nil
	})
}

// releaseTxn is the transaction of a release, with the ticket as the
// release records it.
type releaseTxn struct {
	txn
	ticket Ticket
	final  bool // the ticket is deleted: its attempts are spent
}

// releaseTxn reads ticket id and its claim and builds the release
// transaction on them: the claim is deleted, the ticket records the
// attempt (when attempt) or is deleted (final, or its start is moot), and
// the instance of a start (or of a final stop) is put back, failed or
// retired (releaseInstanceOps). Its Else reads the ticket and the claim
// for releaseFailed.
func (s *HostSession) releaseTxn(ctx context.Context, what, id, reason string, attempt bool) (releaseTxn, error) {
	r := s.r
	tk, ck := r.ticketKey(id), r.claimKey(id)
	snap, err := r.cli.Txn(ctx).Then(clientv3.OpGet(tk), clientv3.OpGet(ck)).Commit()
	if err != nil {
		return releaseTxn{}, errorf("%s: %w", what, err)
	}
	tkv, ckv := first(rangeKvs(snap, 0)), first(rangeKvs(snap, 1))
	if err := s.releaseFailed(what, tkv, ckv); err != nil {
		return releaseTxn{}, err
	}
	cur, err := decodeTicket(tkv, id)
	if err != nil {
		return releaseTxn{}, err
	}
	if cur.MaxAttempts <= 0 {
		cur.MaxAttempts = 3
	}
	if attempt {
		cur.Attempts++
		cur.FailedHosts = append(cur.FailedHosts, s.id)
		cur.Reasons = append(cur.Reasons, reason)
	}
	c := releaseTxn{ticket: cur, final: attempt && cur.Attempts >= cur.MaxAttempts, txn: txn{
		cmps: []clientv3.Cmp{unchanged(tk, tkv.ModRevision), s.holderCmp(id)},
		then: []clientv3.Op{clientv3.OpDelete(ck)},
		els:  []clientv3.Op{clientv3.OpGet(tk), clientv3.OpGet(ck)},
	}}
	var in Instance
	if cur.Op == TicketStart || (c.final && cur.Op == TicketStop) {
		in, err = r.Instance(ctx, cur.Instance)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return releaseTxn{}, err
		}
		if err == nil {
			c.cmps = append(c.cmps, unchanged(r.instanceKey(in.ID), in.ModRevision))
		}
	}
	// A start is offered again only for an instance still waiting for it:
	// one that ended meanwhile (a stop ticket on the claimed instance, the
	// reconciler), that is to be stopped or that a drain replaced must not
	// run elsewhere, uncounted.
	retired := cur.Op == TicketStart && err == nil && (retire(in) || in.Host != s.id)
	if cur.Op == TicketStart && err == nil && !retired && !c.final {
		// Only a start that never ran goes back to pending: one this
		// host already reported starting or running has a process
		// here, and another copy must not be placed while it lives.
		if terr := ValidTransition(in.State, InstancePending); terr != nil {
			return releaseTxn{}, errorf("%s: instance %q is %s on this host: %w", what, in.ID, in.State, terr)
		}
	}
	if c.final || retired {
		c.then = append(c.then, clientv3.OpDelete(tk))
	} else {
		c.then = append(c.then, clientv3.OpPut(tk, encode(cur)))
	}
	if in.ID != "" {
		c.then = append(c.then, s.releaseInstanceOps(cur, in, c.final, retired, reason)...)
	}
	return c, nil
}

// releaseInstanceOps are the writes of a release of ticket t to its
// instance in (as read): a retired start's instance exits unstarted if it
// is still on this host (another host's is left alone); a stop ticket's
// instance counts toward its scale again; a start whose attempts are
// spent (final) fails; any other start goes back to pending.
func (s *HostSession) releaseInstanceOps(t Ticket, in Instance, final, retired bool, reason string) []clientv3.Op {
	r := s.r
	var ops []clientv3.Op
	now := time.Now().UTC()
	switch {
	case retired && in.Host == s.id:
		ops = r.retireOps(in, s.id, reason)
	case retired:
		// Someone else decided its fate.
	case t.Op == TicketStop:
		in.StopTicket = ""
		ops = []clientv3.Op{clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc))}
	case final:
		in.State, in.Since = InstanceFailed, now
		in.Reason = fmt.Sprintf("start failed %d times, last on %s: %s", t.Attempts, s.id, reason)
		ops = []clientv3.Op{clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc))}
	default:
		in.State, in.Since, in.Host = InstancePending, now, ""
		ops = []clientv3.Op{clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc))}
	}
	if t.Op == TicketStart {
		ops = append(ops, clientv3.OpDelete(r.hostInstanceKey(s.id, in.ID)))
	}
	return ops
}

// releaseFailed says why a release of the ticket (tkv) and claim (ckv) as
// read cannot go through: the ticket is gone (ErrTicketDone, ErrNotFound)
// or this session does not hold its claim (ErrNotHolder). nil means
// nothing stops it: what changed was the ticket or its instance, and the
// release is built again.
func (s *HostSession) releaseFailed(what string, tkv, ckv *mvccpb.KeyValue) error {
	switch {
	case tkv == nil:
		return errorf("%s: %w (%w)", what, ErrTicketDone, ErrNotFound)
	case ckv == nil || clientv3.LeaseID(ckv.Lease) != s.lease:
		return errorf("%s: %w", what, ErrNotHolder)
	}
	return nil
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

// complete is Complete (in nil) and CompleteWith: completeTxn builds the
// transaction, completeFailed says why one did not go through, and a
// completion that only met a change of the instance is built again.
func (s *HostSession) complete(ctx context.Context, t Ticket, in *Instance) error {
	if err := validID("ticket id", t.ID); err != nil {
		return err
	}
	if in != nil {
		in.ID = t.Instance
		if err := validID("instance id", in.ID); err != nil {
			return err
		}
	}
	what := fmt.Sprintf("registry: complete ticket %s", t.ID)
	return retry(ctx, what, func() (bool, error) {
		c, ok, err := s.completeTxn(ctx, what, t, in)
		if !ok || err != nil {
			return false, err
		}
		resp, err := s.commit(ctx, what, c.txn)
		if err != nil {
			return false, err
		}
		if !resp.Succeeded {
			return false, s.completeFailed(ctx, what, t, in, resp)
		}
		if in != nil {
			*in = c.next
			in.ModRevision = resp.Header.Revision
			s.remember(*in)
		}
		return true, nil
	})
}

// completeTxn is the transaction of a completion, with the instance record
// it writes (CompleteWith).
type completeTxn struct {
	txn
	next Instance
}

// completeTxn builds the completion of ticket t: the claim is this
// session's, then the ticket and the claim are deleted. With in (a
// CompleteWith) it is a read-modify-write like UpdateInstance: the record
// as remembered or read, with the holder's view from in, on the index
// entry of this session's lease; fields the holder does not own (a stop
// ticket or replacement link written meanwhile) survive, and the
// generation key is touched only when the instance's counting changes, so
// completions do not make concurrent Scale calls retry. It reports false
// without an error when the remembered copy refused the change and is
// forgotten: the next attempt decides on the stored record. Its Else
// counts the ticket for completeFailed.
func (s *HostSession) completeTxn(ctx context.Context, what string, t Ticket, in *Instance) (completeTxn, bool, error) {
	r := s.r
	tk := r.ticketKey(t.ID)
	c := completeTxn{txn: txn{
		cmps: []clientv3.Cmp{s.holderCmp(t.ID)},
		then: []clientv3.Op{clientv3.OpDelete(tk), clientv3.OpDelete(r.claimKey(t.ID))},
		els:  []clientv3.Op{clientv3.OpGet(tk, clientv3.WithCountOnly())},
	}}
	if in == nil {
		return c, true, nil
	}
	cur, cached, err := s.stored(ctx, in.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		cur = Instance{ID: in.ID, App: t.App, Rev: t.Rev, Proc: t.Proc, Ticket: t.ID, Created: t.Created}
	case err != nil:
		return c, false, err
	default:
		if err := ValidTransition(cur.State, in.State); err != nil {
			if cached {
				s.forget(in.ID)
				return c, false, nil
			}
			return c, false, errorf("%s: %w", what, err)
		}
	}
	cur.Host = s.id
	c.next = withHolderView(cur, *in)
	ik := r.hostInstanceKey(s.id, in.ID)
	c.cmps = append(c.cmps, clientv3.Compare(clientv3.LeaseValue(ik), "=", s.lease),
		unchanged(r.instanceKey(in.ID), cur.ModRevision))
	c.then = append(c.then, clientv3.OpPut(r.instanceKey(in.ID), encode(c.next)))
	if c.next.State.Terminal() {
		c.then = append(c.then, clientv3.OpDelete(ik))
	}
	if cur.ModRevision == 0 || cur.counted() != c.next.counted() {
		c.then = append(c.then, touch(r.genKey(c.next.App, c.next.Rev, c.next.Proc)))
	}
	return c, true, nil
}

// completeFailed says why the completion of ticket t (with in, for
// CompleteWith) did not go through, from its Else count of the ticket
// (resp) and a read of what this session should hold: the ticket is gone
// (ErrTicketDone, ErrNotFound), or the claim or the instance's index
// entry is not on this session's lease (ErrNotHolder). nil means only the
// instance changed: the completion is built again on the stored record
// (the remembered copy, which may be what failed, is forgotten).
func (s *HostSession) completeFailed(ctx context.Context, what string, t Ticket, in *Instance, resp *clientv3.TxnResponse) error {
	r := s.r
	if in != nil {
		s.forget(in.ID)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return errorf("%s: %w (%w)", what, ErrTicketDone, ErrNotFound)
	}
	check := []clientv3.Op{clientv3.OpGet(r.claimKey(t.ID))}
	if in != nil {
		check = append(check, clientv3.OpGet(r.hostInstanceKey(s.id, in.ID)))
	}
	held, err := r.cli.Txn(ctx).Then(check...).Commit()
	if err != nil {
		return s.leaseErr(what, err)
	}
	for i := range check {
		if kv := first(rangeKvs(held, i)); kv == nil || clientv3.LeaseID(kv.Lease) != s.lease {
			return errorf("%s: %w", what, ErrNotHolder)
		}
	}
	return nil
}

// withHolderView returns cur with the fields the holder reports taken from
// inst (state, since, port, pid, pid start, restarts, exit code, signal,
// reason); everything else (stop ticket, replacement links, ticket,
// created) keeps its stored value.
func withHolderView(cur, inst Instance) Instance {
	next := cur
	next.State, next.Port, next.PID, next.PIDStart = inst.State, inst.Port, inst.PID, inst.PIDStart
	next.Restarts, next.ExitCode, next.Signal, next.Reason = inst.Restarts, inst.ExitCode, inst.Signal, inst.Reason
	next.Health = inst.Health
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
// port, pid, pid start, restarts, exit code, signal, reason and health; the other
// fields keep their stored values. The holder does not set lost
// (ErrInvalid) or pending (ErrTransition: a release does). The stored
// instance must name this host and not be lost (else ErrNotHolder), and
// the state change must pass ValidTransition (else ErrTransition). The host index entry is rebound to
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
		return false, errorf("%s: instance is %s on %q: %w", what, cur.State, cur.Host, ErrNotHolder)
	}
	if err := ValidTransition(cur.State, inst.State); err != nil {
		return false, errorf("%s: %w", what, err)
	}
	if inst.State == InstancePending && cur.State != InstancePending {
		// Back to pending is a release of the start ticket (Release,
		// Unclaim), which clears the host with the claim; a holder
		// writing it would keep its host on a record that waits for one.
		return false, errorf("%s: %w %q to %q: only a release of the start ticket does that", what, ErrTransition, cur.State, inst.State)
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
			return false, errorf("%s: instance is %s on %q: %w", what, cur.State, cur.Host, ErrNotHolder)
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
