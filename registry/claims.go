package registry

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Claim claims ticket t as read (t.ModRevision must be the revision it was
// read at) in one transaction: the ticket is unchanged and unclaimed, then
// claims/<id> is written bound to the lease. For a start ticket the same
// transaction writes the instance as claimed by this host and its host
// index entry; for stop, restart and signal tickets the instance must be
// indexed under this host. It returns the instance as written (start) or as
// stored (other ops). Claiming a ticket this session already holds
// succeeds the same way, so a claim whose reply was lost may be retried.
// A start ticket whose instance was written after it is claimed over the
// stored record (see claimOver). Errors wrap ErrClaimed, ErrTicketChanged,
// ErrTicketDone, ErrNotHolder (the instance is not on this host) or
// ErrLeaseLost; other errors (the connection) leave the outcome unknown.
func (s *HostSession) Claim(ctx context.Context, t Ticket) (Instance, error) {
	c, err := s.claimTxn(t)
	if err != nil {
		return Instance{}, err
	}
	return s.claimOne(ctx, c)
}

// claimOne sends claim c as a transaction of its own.
func (s *HostSession) claimOne(ctx context.Context, c claimTxn) (Instance, error) {
	t := c.t
	resp, err := s.commit(ctx, claimWhat(t.ID), c.txn)
	if err != nil {
		return Instance{}, err
	}
	if !resp.Succeeded {
		res := s.claimFailed(ctx, []Ticket{t})[0]
		return res.Instance, res.Err
	}
	return s.claimed(ctx, c, resp.Header.Revision, resp.Responses)
}

// MaxClaimBatch is the most tickets ClaimBatch sends in one transaction.
// etcd bounds the operations of a transaction (--max-txn-ops, 128 by
// default) and the size of a request; 16 claims stay well inside both.
const MaxClaimBatch = 16

// ClaimResult is the outcome of one ticket of a ClaimBatch: the instance
// as Claim would return it, or Claim's error.
type ClaimResult struct {
	Instance Instance
	Err      error
}

// ClaimBatch claims several tickets in one round trip: one transaction
// whose branches are the claim transactions of Claim, nested, so each
// ticket is claimed or lost on its own and a lost one does not hold back
// the others. An agent that sees a burst of tickets it may claim sends
// them together instead of one round trip each (etcd's per-request work is
// most of a claim's cost; see BENCHMARKS.md). Results are in ts's order.
// A ticket that fails validation, or repeats a ticket or a start ticket's
// instance earlier in ts (etcd refuses a transaction that writes one key
// twice), gets its error without being sent; a failed round trip is the
// error of every ticket sent in it. More than MaxClaimBatch tickets go in
// several transactions, one after the other.
func (s *HostSession) ClaimBatch(ctx context.Context, ts []Ticket) []ClaimResult {
	out := make([]ClaimResult, len(ts))
	seen := make(map[string]bool, 2*len(ts))
	for from := 0; from < len(ts); from += MaxClaimBatch {
		to := min(len(ts), from+MaxClaimBatch)
		s.claimBatch(ctx, ts[from:to], out[from:to], seen)
	}
	return out
}

// claimBatch claims ts (at most MaxClaimBatch) in one transaction and
// writes their outcomes to out; seen has the tickets and start instances
// of the call's earlier transactions.
func (s *HostSession) claimBatch(ctx context.Context, ts []Ticket, out []ClaimResult, seen map[string]bool) {
	var (
		sent []int // indexes into ts of the branches, in order
		txns []claimTxn
		ops  []clientv3.Op
	)
	for i, t := range ts {
		c, err := s.claimTxn(t)
		if err == nil {
			err = batchRepeat(seen, t)
		}
		if err != nil {
			out[i].Err = err
			continue
		}
		sent = append(sent, i)
		txns = append(txns, c)
		ops = append(ops, clientv3.OpTxn(c.cmps, c.then, nil))
	}
	switch len(sent) {
	case 0:
		return
	case 1:
		// One ticket: the flat transaction, as Claim sends it.
		i := sent[0]
		out[i].Instance, out[i].Err = s.claimOne(ctx, txns[0])
		return
	}
	resp, err := s.r.cli.Txn(ctx).Then(ops...).Commit()
	var lost []int // indexes into ts of the claims that did not go through
	for k, i := range sent {
		switch {
		case err != nil:
			out[i].Err = s.leaseErr(claimWhat(ts[i].ID), err)
		case !resp.Responses[k].GetResponseTxn().Succeeded:
			lost = append(lost, i)
		default:
			out[i].Instance, out[i].Err = s.claimed(ctx, txns[k], resp.Header.Revision, resp.Responses[k].GetResponseTxn().Responses)
		}
	}
	if len(lost) == 0 {
		return
	}
	lostTs := make([]Ticket, len(lost))
	for k, i := range lost {
		lostTs[k] = ts[i]
	}
	for k, res := range s.claimFailed(ctx, lostTs) {
		out[lost[k]] = res
	}
}

// batchRepeat reports a ticket, or the instance of a start ticket, that
// an earlier ticket of the same batch already has; seen collects them.
func batchRepeat(seen map[string]bool, t Ticket) error {
	if seen["t/"+t.ID] {
		return errorf("%s: %w: ticket given twice in one batch", claimWhat(t.ID), ErrInvalid)
	}
	seen["t/"+t.ID] = true
	if t.Op != TicketStart {
		return nil
	}
	if seen["i/"+t.Instance] {
		return errorf("%s: %w: instance %q has another start ticket in the batch", claimWhat(t.ID), ErrInvalid, t.Instance)
	}
	seen["i/"+t.Instance] = true
	return nil
}

// claimTxn is one ticket's claim transaction, as Claim and ClaimBatch
// send it, and for a start ticket the instance record it writes. It has
// no Else branch: claims are the hot path and an Else costs every claim
// request bytes and apply work, while a lost claim is rare (agents wait
// for one another's claims). claimFailed reads the reason after a failure
// instead.
type claimTxn struct {
	txn
	t  Ticket
	in Instance
}

// claimTxn checks ticket t and builds its claim transaction.
func (s *HostSession) claimTxn(t Ticket) (claimTxn, error) {
	if err := validID("ticket id", t.ID); err != nil {
		return claimTxn{}, err
	}
	if err := validID("instance id", t.Instance); err != nil {
		return claimTxn{}, err
	}
	if t.ModRevision == 0 {
		return claimTxn{}, fmt.Errorf("%w: ticket %s has no revision; pass it as read", ErrInvalid, t.ID)
	}
	if t.Host != "" && t.Host != s.id {
		return claimTxn{}, fmt.Errorf("%w: ticket %s targets host %q", ErrInvalid, t.ID, t.Host)
	}
	if !t.Op.Valid() {
		return claimTxn{}, fmt.Errorf("%w: ticket %s: unknown op %s", ErrInvalid, t.ID, short(string(t.Op)))
	}
	// The names go into the instance record and from there into keys.
	if err := validNames("ticket app", t.App, "ticket rev", t.Rev, "ticket proc", t.Proc); err != nil {
		return claimTxn{}, err
	}
	r := s.r
	tk, ck := r.ticketKey(t.ID), r.claimKey(t.ID)
	c := claimTxn{t: t, txn: txn{cmps: []clientv3.Cmp{unchanged(tk, t.ModRevision), absent(ck)}}}
	if t.Op == TicketStart {
		// The claim writes the instance record whole, without reading it:
		// the record must be the pending one written with the ticket (in
		// the same transaction, so at the ticket's revision), whose fields
		// the ticket carries.
		c.cmps = append(c.cmps, unchanged(r.instanceKey(t.Instance), t.ModRevision))
		c.in = Instance{ID: t.Instance, App: t.App, Rev: t.Rev, Proc: t.Proc, Host: s.id,
			State: InstanceClaimed, Since: time.Now().UTC(), Ticket: t.ID, Created: t.Created, Replaces: t.Replaces,
			Reserve: t.Reserve}
		c.then = s.startClaimOps(t.ID, c.in)
	} else {
		c.cmps = append(c.cmps, exists(r.hostInstanceKey(s.id, t.Instance)), exists(r.instanceKey(t.Instance)))
		c.then = []clientv3.Op{clientv3.OpPut(ck, s.id, clientv3.WithLease(s.lease)), clientv3.OpGet(r.instanceKey(t.Instance))}
	}
	return c, nil
}

// startClaimOps are the writes of a claim of start ticket id: the claim
// and the host index entry of instance in on this session's lease, and in
// (claimed by this host) as the instance record.
func (s *HostSession) startClaimOps(id string, in Instance) []clientv3.Op {
	r := s.r
	return []clientv3.Op{
		clientv3.OpPut(r.claimKey(id), s.id, clientv3.WithLease(s.lease)),
		clientv3.OpPut(r.instanceKey(in.ID), encode(in)),
		clientv3.OpPut(r.hostInstanceKey(s.id, in.ID), "", clientv3.WithLease(s.lease)),
	}
}

// claimed finishes claim c that went through at revision rev; resps are
// the responses of its operations. It returns the instance as written
// (start) or as read in the claim (other ops), and remembers it.
func (s *HostSession) claimed(ctx context.Context, c claimTxn, rev int64, resps []*etcdserverpb.ResponseOp) (Instance, error) {
	t := c.t
	if t.Op == TicketStart {
		in := c.in
		in.ModRevision = rev
		s.remember(in)
		if s.log.IsDebug() {
			s.log.Debug("ticket claimed", "ticket", t.ID, "instance", in.ID)
		}
		return in, nil
	}
	// The claim compared that the record exists; one that does not
	// decode gets the claim dropped again, so the ticket is not held by
	// a host that cannot work on it.
	var in Instance
	err := fmt.Errorf("%w: instance %q", ErrNotFound, t.Instance)
	if kv := first(resps[1].GetResponseRange().Kvs); kv != nil {
		in, err = decodeInstance(kv, t.Instance)
	}
	if err != nil {
		if _, derr := s.r.cli.Txn(ctx).If(s.holderCmp(t.ID)).Then(clientv3.OpDelete(s.r.claimKey(t.ID))).Commit(); derr != nil {
			s.log.Warn("drop claim over an undecodable instance", "ticket", t.ID, "error", derr)
		}
		return Instance{}, errorf("%s: %w", claimWhat(t.ID), err)
	}
	s.remember(in)
	return in, nil
}

func claimWhat(id string) string { return "registry: claim ticket " + id }

// claimFailed settles claim transactions that did not succeed, from one
// read of each ticket, its claim and its instance: one round trip for all
// of ts. A claim this session already holds is a retry of one whose reply
// was lost: it succeeds with the instance as stored. The read comes after
// the failed transactions, so a ticket may have moved on again; the reason
// names the first of these that holds: the ticket is gone, someone holds
// it, it changed, or (for stop, restart and signal) the instance is not on
// this host. A start ticket whose instance was written after it, which a
// claim does not overwrite blind, is claimed over the stored record
// instead (claimOver).
func (s *HostSession) claimFailed(ctx context.Context, ts []Ticket) []ClaimResult {
	r := s.r
	out := make([]ClaimResult, len(ts))
	ops := make([]clientv3.Op, 0, 3*len(ts))
	at := make([]int, len(ts)) // index of each ticket's first read
	for i, t := range ts {
		at[i] = len(ops)
		ops = append(ops, clientv3.OpGet(r.ticketKey(t.ID)), clientv3.OpGet(r.claimKey(t.ID)),
			clientv3.OpGet(r.instanceKey(t.Instance)))
	}
	resp, err := r.cli.Txn(ctx).Then(ops...).Commit()
	for i, t := range ts {
		what := claimWhat(t.ID)
		if err != nil {
			out[i].Err = s.leaseErr(what, err)
			continue
		}
		tkv, ckv, ikv := first(rangeKvs(resp, at[i])), first(rangeKvs(resp, at[i]+1)), first(rangeKvs(resp, at[i]+2))
		if tkv != nil && ckv != nil && clientv3.LeaseID(ckv.Lease) == s.lease && ikv != nil {
			// This session holds it: an earlier try went through,
			// though its reply was lost (a timeout, a broken
			// connection), and this one is a retry.
			in, derr := decodeInstance(ikv, t.Instance)
			if derr == nil {
				s.remember(in)
			}
			out[i] = ClaimResult{Instance: in, Err: derr}
			continue
		}
		if out[i].Err = lostClaim(what, t, tkv, ckv); out[i].Err != nil {
			continue
		}
		if t.Op != TicketStart {
			out[i].Err = s.notHeldHere(ctx, t, ikv)
			continue
		}
		switch {
		case ikv == nil:
			out[i].Err = s.dropMoot(ctx, t, absent(r.instanceKey(t.Instance)), "its instance is gone")
		case ikv.ModRevision == t.ModRevision:
			// Every condition holds again now: the claim that beat this
			// one has already been released.
			out[i].Err = errorf("%s: %w", what, ErrClaimed)
		default:
			in, derr := decodeInstance(ikv, t.Instance)
			if derr != nil {
				out[i].Err = errorf("%s: %w", what, derr)
				continue
			}
			out[i].Instance, out[i].Err = s.claimOver(ctx, t, in)
		}
	}
	return out
}

// notHeldHere explains a stop, restart or signal claim that failed though
// the ticket is unchanged and unclaimed: the instance (ikv as read) is not
// indexed on this host. One that has ended, or whose record is gone, needs
// the ticket no more: it is deleted (nobody could claim it, the claim
// compares the index entry of a live instance).
func (s *HostSession) notHeldHere(ctx context.Context, t Ticket, ikv *mvccpb.KeyValue) error {
	ik := s.r.instanceKey(t.Instance)
	if ikv == nil {
		return s.dropMoot(ctx, t, absent(ik), "its instance is gone")
	}
	if in, err := decodeInstance(ikv, t.Instance); err == nil && in.State.Terminal() {
		return s.dropMoot(ctx, t, unchanged(ik, ikv.ModRevision), "its instance is "+string(in.State))
	}
	return errorf("%s: instance %q is not on host %q: %w", claimWhat(t.ID), t.Instance, s.id, ErrNotHolder)
}

// dropMoot deletes ticket t, which nothing can claim or needs any more
// (why), if it is still unchanged and unclaimed and cond still holds of its
// instance, and says so with an error wrapping ErrTicketDone.
func (s *HostSession) dropMoot(ctx context.Context, t Ticket, cond clientv3.Cmp, why string) error {
	r := s.r
	what := claimWhat(t.ID)
	tk := r.ticketKey(t.ID)
	resp, err := r.cli.Txn(ctx).If(unchanged(tk, t.ModRevision), absent(r.claimKey(t.ID)), cond).
		Then(clientv3.OpDelete(tk)).Commit()
	switch {
	case err != nil:
		return s.leaseErr(what, err)
	case !resp.Succeeded:
		return errorf("%s: %w", what, ErrTicketChanged)
	}
	s.log.Info("ticket deleted: nothing left to do", "ticket", t.ID, "op", string(t.Op), "instance", t.Instance, "why", why)
	return errorf("%s: %w: %s; the ticket is deleted", what, ErrTicketDone, why)
}

// claimOver claims start ticket t whose instance record in was written
// after the ticket: a claim that died with its host's lease left it
// claimed (or starting) by that host, maybe with a stop requested or a
// drain's replacement meanwhile. One transaction, on the record as read:
// an instance that still waits for its start is claimed with what others
// wrote kept (stop ticket, replacement links, restart counts); one that
// does not (see retire) ends unstarted with the ticket, and the error
// wraps ErrTicketDone.
func (s *HostSession) claimOver(ctx context.Context, t Ticket, in Instance) (Instance, error) {
	r := s.r
	what := claimWhat(t.ID)
	tk, ck := r.ticketKey(t.ID), r.claimKey(t.ID)
	cmps := []clientv3.Cmp{unchanged(tk, t.ModRevision), absent(ck), unchanged(r.instanceKey(in.ID), in.ModRevision)}
	if in.Host != "" {
		// The earlier holder must be gone, not just its claim: a host
		// whose lease ended and came back has adopted the instance again
		// (its index entry is live), and it decides, re-claiming the
		// ticket itself.
		cmps = append(cmps, absent(r.hostInstanceKey(in.Host, in.ID)))
	}
	if retire(in) {
		ops := append([]clientv3.Op{clientv3.OpDelete(tk)}, r.retireOps(in, s.id, "claim of its start ticket")...)
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		switch {
		case err != nil:
			return Instance{}, s.leaseErr(what, err)
		case !resp.Succeeded:
			return Instance{}, errorf("%s: %w", what, ErrTicketChanged)
		}
		return Instance{}, errorf("%s: %w: instance %q is %s, stop ticket %q, replaced by %q: the start is withdrawn",
			what, ErrTicketDone, in.ID, in.State, in.StopTicket, in.ReplacedBy)
	}
	switch in.State {
	case InstancePending, InstanceClaimed, InstanceStarting:
	default:
		return Instance{}, errorf("%s: instance %q is %s on %q, not waiting for a start: %w", what, in.ID, in.State, in.Host, ErrTicketChanged)
	}
	next := in
	next.Host, next.State, next.Since, next.Ticket = s.id, InstanceClaimed, time.Now().UTC(), t.ID
	next.PID, next.PIDStart, next.Port, next.ExitCode, next.Signal, next.Reason = 0, 0, 0, nil, "", ""
	resp, err := r.cli.Txn(ctx).If(cmps...).Then(s.startClaimOps(t.ID, next)...).Commit()
	switch {
	case err != nil:
		return Instance{}, s.leaseErr(what, err)
	case !resp.Succeeded:
		return Instance{}, errorf("%s: %w, or instance %q is back on live host %q", what, ErrTicketChanged, in.ID, in.Host)
	}
	next.ModRevision = resp.Header.Revision
	s.remember(next)
	return next, nil
}

// Reclaim takes back the claim of a start ticket whose instance this host
// already runs (adopted after a new lease: the old claim died with the old
// lease before the ticket was completed), without touching the instance
// record, so its state does not go back to claimed. One transaction: the
// ticket unchanged, no live claim, and the instance's host index entry on
// this session's lease (Adopt puts it there); then the claim is put.
// Errors as Claim.
func (s *HostSession) Reclaim(ctx context.Context, t Ticket) error {
	if err := validID("ticket id", t.ID); err != nil {
		return err
	}
	if err := validID("instance id", t.Instance); err != nil {
		return err
	}
	if t.ModRevision == 0 {
		return fmt.Errorf("%w: ticket %s has no revision; pass it as read", ErrInvalid, t.ID)
	}
	r := s.r
	tk, ck, ik := r.ticketKey(t.ID), r.claimKey(t.ID), r.hostInstanceKey(s.id, t.Instance)
	what := fmt.Sprintf("registry: reclaim ticket %s", t.ID)
	resp, err := r.cli.Txn(ctx).If(unchanged(tk, t.ModRevision), absent(ck),
		clientv3.Compare(clientv3.LeaseValue(ik), "=", s.lease)).
		Then(clientv3.OpPut(ck, s.id, clientv3.WithLease(s.lease))).
		Else(clientv3.OpGet(tk), clientv3.OpGet(ck)).Commit()
	if err != nil {
		return s.leaseErr(what, err)
	}
	if !resp.Succeeded {
		if err := lostClaim(what, t, first(rangeKvs(resp, 0)), first(rangeKvs(resp, 1))); err != nil {
			return err
		}
		return errorf("%s: instance %q is not bound to this session: %w", what, t.Instance, ErrNotHolder)
	}
	return nil
}

// lostClaim explains a claim of ticket t that did not go through, from the
// ticket (tkv) and its claim (ckv) as read: the ticket is gone, someone
// holds it, or it changed. nil if none of these holds.
func lostClaim(what string, t Ticket, tkv, ckv *mvccpb.KeyValue) error {
	switch {
	case tkv == nil:
		return errorf("%s: %w (%w)", what, ErrTicketDone, ErrNotFound)
	case ckv != nil:
		return errorf("%s: held by %q: %w", what, ckv.Value, ErrClaimed)
	case tkv.ModRevision != t.ModRevision:
		return errorf("%s: %w", what, ErrTicketChanged)
	}
	return nil
}
