package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Hosts lists the live hosts sorted by id. If some stored values (hosts or
// drains) do not decode, it returns the others together with a BadRecords
// error naming them (see Skipped). A host whose record is bad is left out
// although its key (and so, usually, its lease) exists.
func (r *Registry) Hosts(ctx context.Context) ([]Host, error) {
	resp, err := r.cli.Get(ctx, r.hostsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("registry: list hosts: %w", err)
	}
	var out []Host
	var errs []error
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), r.hostsDir())
		if strings.Contains(id, "/") {
			continue
		}
		h, err := decodeHost(kv, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, h)
	}
	drains, err := r.Drains(ctx)
	if bad, err := Skipped(err); err != nil {
		return nil, err
	} else if bad != nil {
		errs = append(errs, bad) // the draining flags may be short of these
	}
	for i := range out {
		_, out[i].Draining = drains[out[i].ID]
	}
	return out, joinCorrupt(errs)
}

// Host returns one live host.
func (r *Registry) Host(ctx context.Context, id string) (Host, error) {
	if err := validName("host", id); err != nil {
		return Host{}, err
	}
	resp, err := r.cli.Get(ctx, r.hostKey(id))
	if err != nil {
		return Host{}, fmt.Errorf("registry: get host %q: %w", id, err)
	}
	kv := first(resp.Kvs)
	if kv == nil {
		return Host{}, fmt.Errorf("%w: host %q", ErrNotFound, id)
	}
	return decodeHost(kv, id)
}

// HostSession is one agent's presence in the registry: a lease kept alive
// by one KeepAlive stream, the host key bound to it, and the claims and
// instance index entries the host writes with it. When the lease is lost
// they all vanish together, so other hosts may take over the tickets.
type HostSession struct {
	r     *Registry
	id    string
	lease clientv3.LeaseID
	log   hclog.Logger

	cancel context.CancelFunc // stops the keepalive stream
	donec  chan struct{}      // closed by the keepalive goroutine on exit
	wg     sync.WaitGroup     // the keepalive goroutine

	mu sync.Mutex
	// known holds, per instance this session holds, the record as it last
	// wrote or read it, with its ModRevision: the base of the next
	// holder update, which then needs no read first. A copy that is stale
	// (someone else wrote the record since) fails the update's revision
	// compare, is forgotten, and the update reads the record and goes on.
	known map[string]Instance
}

// remember keeps in (as stored at in.ModRevision) as the base of this
// session's next write of it, or forgets it when this session no longer
// writes it: terminal, lost or another host's.
func (s *HostSession) remember(in Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.Host != s.id || in.State.Terminal() || in.State == InstanceLost || in.ModRevision == 0 {
		delete(s.known, in.ID)
		return
	}
	// The caller may reuse its map and pointer; keep copies.
	in.Restarts = maps.Clone(in.Restarts)
	if in.ExitCode != nil {
		code := *in.ExitCode
		in.ExitCode = &code
	}
	s.known[in.ID] = in
}

// forget drops the remembered copy of instance id.
func (s *HostSession) forget(id string) {
	s.mu.Lock()
	delete(s.known, id)
	s.mu.Unlock()
}

// stored returns the record of instance id this session remembers (cached
// true), else reads it from etcd.
func (s *HostSession) stored(ctx context.Context, id string) (in Instance, cached bool, err error) {
	s.mu.Lock()
	in, cached = s.known[id]
	s.mu.Unlock()
	if cached {
		return in, true, nil
	}
	in, err = s.r.Instance(ctx, id)
	return in, false, err
}

// RegisterHost grants a lease with ttl (rounded up to whole seconds, default
// 10s), writes hosts/<id> bound to it and keeps the lease alive until Close,
// Orphan or loss. It fails with ErrExists while another live lease holds
// the host key. Started and Updated default to now.
func (r *Registry) RegisterHost(ctx context.Context, h Host, ttl time.Duration) (*HostSession, error) {
	if err := validName("host", h.ID); err != nil {
		return nil, err
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: host ttl %s is negative", ErrInvalid, ttl)
	}
	if ttl == 0 {
		ttl = 10 * time.Second
	}
	now := time.Now().UTC()
	if h.Started.IsZero() {
		h.Started = now
	}
	if h.Updated.IsZero() {
		h.Updated = now
	}
	grant, err := r.cli.Grant(ctx, int64(math.Ceil(ttl.Seconds())))
	if err != nil {
		return nil, fmt.Errorf("registry: register host %q: grant lease: %w", h.ID, accessErr(err))
	}
	revoke := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		r.cli.Revoke(rctx, grant.ID)
	}
	k := r.hostKey(h.ID)
	resp, err := r.cli.Txn(ctx).If(absent(k)).Then(clientv3.OpPut(k, encode(h), clientv3.WithLease(grant.ID))).Commit()
	if err != nil {
		revoke()
		return nil, fmt.Errorf("registry: register host %q: %w", h.ID, accessErr(err))
	}
	if !resp.Succeeded {
		revoke()
		return nil, fmt.Errorf("%w: host %q is held by another live lease", ErrExists, h.ID)
	}
	kctx, cancel := context.WithCancel(context.Background())
	ka, err := r.cli.KeepAlive(kctx, grant.ID)
	if err != nil {
		cancel()
		revoke()
		return nil, fmt.Errorf("registry: register host %q: keepalive: %w", h.ID, err)
	}
	s := &HostSession{r: r, id: h.ID, lease: grant.ID, cancel: cancel, donec: make(chan struct{}),
		log: r.log.With("host", h.ID), known: make(map[string]Instance)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(s.donec)
		for range ka {
			// The client closes ka when the lease expires, is revoked or
			// kctx ends; responses carry nothing we need.
		}
		if kctx.Err() == nil {
			s.log.Info("host lease lost", "lease", int64(grant.ID))
		}
	}()
	s.log.Info("host registered", "lease", int64(grant.ID), "ttl", grant.TTL)
	return s, nil
}

// ID returns the host id.
func (s *HostSession) ID() string { return s.id }

// Lease returns the session's lease.
func (s *HostSession) Lease() clientv3.LeaseID { return s.lease }

// Done is closed when the lease is lost (expired, revoked, or not renewed
// within its TTL) or the session is closed or orphaned.
func (s *HostSession) Done() <-chan struct{} { return s.donec }

// Close stops the keepalives and revokes the lease, which deletes the host
// key, its claims and its instance index entries. It waits for the
// keepalive goroutine. Revoking an already lost lease is not an error.
func (s *HostSession) Close(ctx context.Context) error {
	s.cancel()
	s.wg.Wait()
	if _, err := s.r.cli.Revoke(ctx, s.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("registry: close host session %q: %w", s.id, err)
	}
	return nil
}

// Orphan stops the keepalives without revoking the lease, which then
// expires after its TTL. Done is closed. For tests of lease expiry and for
// handing over to a restarted agent.
func (s *HostSession) Orphan() {
	s.cancel()
	s.wg.Wait()
}

// leaseErr maps an etcd lease error to ErrLeaseLost.
func (s *HostSession) leaseErr(what string, err error) error {
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("%s: %w", what, ErrLeaseLost)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// UpdateHost rewrites the host record (status, load) under the same lease.
// ErrLeaseLost if the lease is gone.
func (s *HostSession) UpdateHost(ctx context.Context, h Host) error {
	h.ID = s.id
	if h.Updated.IsZero() {
		h.Updated = time.Now().UTC()
	}
	k := s.r.hostKey(s.id)
	what := fmt.Sprintf("registry: update host %q", s.id)
	resp, err := s.r.cli.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(k), "=", s.lease)).
		Then(clientv3.OpPut(k, encode(h), clientv3.WithLease(s.lease))).Commit()
	if err != nil {
		return s.leaseErr(what, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s: %w", what, ErrLeaseLost)
	}
	return nil
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
		return fmt.Errorf("%s: instance %q is not bound to this session: %w", what, t.Instance, ErrNotHolder)
	}
	return nil
}

// lostClaim explains a claim of ticket t that did not go through, from the
// ticket (tkv) and its claim (ckv) as read: the ticket is gone, someone
// holds it, or it changed. nil if none of these holds.
func lostClaim(what string, t Ticket, tkv, ckv *mvccpb.KeyValue) error {
	switch {
	case tkv == nil:
		return fmt.Errorf("%s: %w (%w)", what, ErrTicketDone, ErrNotFound)
	case ckv != nil:
		return fmt.Errorf("%s: held by %q: %w", what, ckv.Value, ErrClaimed)
	case tkv.ModRevision != t.ModRevision:
		return fmt.Errorf("%s: %w", what, ErrTicketChanged)
	}
	return nil
}

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
	// The transaction has no Else branch: claims are the hot path and an
	// Else costs every claim request bytes and apply work, while a lost
	// claim is rare (agents wait for one another's claims). The reason is
	// read after a failure instead.
	resp, err := s.r.cli.Txn(ctx).If(c.cmps...).Then(c.ops...).Commit()
	if err != nil {
		return Instance{}, s.leaseErr(claimWhat(t.ID), err)
	}
	if !resp.Succeeded {
		res := s.claimFailures(ctx, []Ticket{t})[0]
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
		ops = append(ops, clientv3.OpTxn(c.cmps, c.ops, nil))
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
	for k, res := range s.claimFailures(ctx, lostTs) {
		out[lost[k]] = res
	}
}

// batchRepeat reports a ticket, or the instance of a start ticket, that
// an earlier ticket of the same batch already has; seen collects them.
func batchRepeat(seen map[string]bool, t Ticket) error {
	if seen["t/"+t.ID] {
		return fmt.Errorf("%s: %w: ticket given twice in one batch", claimWhat(t.ID), ErrInvalid)
	}
	seen["t/"+t.ID] = true
	if t.Op != TicketStart {
		return nil
	}
	if seen["i/"+t.Instance] {
		return fmt.Errorf("%s: %w: instance %q has another start ticket in the batch", claimWhat(t.ID), ErrInvalid, t.Instance)
	}
	seen["i/"+t.Instance] = true
	return nil
}

// claimTxn is one ticket's claim transaction, as Claim and ClaimBatch
// send it: compares and operations, and for a start ticket the instance
// record the operations write.
type claimTxn struct {
	t    Ticket
	cmps []clientv3.Cmp
	ops  []clientv3.Op
	in   Instance
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
	switch t.Op {
	case TicketStart, TicketStop, TicketRestart, TicketSignal:
	default:
		return claimTxn{}, fmt.Errorf("%w: ticket %s: op %s must be start, stop, restart or signal", ErrInvalid, t.ID, short(string(t.Op)))
	}
	// The names go into the instance record and from there into keys.
	if err := validNames("ticket app", t.App, "ticket rev", t.Rev, "ticket proc", t.Proc); err != nil {
		return claimTxn{}, err
	}
	r := s.r
	tk, ck := r.ticketKey(t.ID), r.claimKey(t.ID)
	c := claimTxn{t: t, cmps: []clientv3.Cmp{unchanged(tk, t.ModRevision), absent(ck)}}
	if t.Op == TicketStart {
		// The claim writes the instance record whole, without reading it:
		// the record must be the pending one written with the ticket (in
		// the same transaction, so at the ticket's revision), whose fields
		// the ticket carries.
		c.cmps = append(c.cmps, unchanged(r.instanceKey(t.Instance), t.ModRevision))
		c.in = Instance{ID: t.Instance, App: t.App, Rev: t.Rev, Proc: t.Proc, Host: s.id,
			State: InstanceClaimed, Since: time.Now().UTC(), Ticket: t.ID, Created: t.Created, Replaces: t.Replaces}
		c.ops = s.startClaimOps(t.ID, c.in)
	} else {
		c.cmps = append(c.cmps, exists(r.hostInstanceKey(s.id, t.Instance)), exists(r.instanceKey(t.Instance)))
		c.ops = []clientv3.Op{clientv3.OpPut(ck, s.id, clientv3.WithLease(s.lease)), clientv3.OpGet(r.instanceKey(t.Instance))}
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
		return Instance{}, fmt.Errorf("%s: %w", claimWhat(t.ID), err)
	}
	s.remember(in)
	return in, nil
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

func claimWhat(id string) string { return "registry: claim ticket " + id }

// claimFailures settles claim transactions that did not succeed, from one
// read of each ticket, its claim and its instance: one round trip for all
// of ts. A claim this session already holds is a retry of one whose reply
// was lost: it succeeds with the instance as stored. The read comes after the failed transactions, so a
// ticket may have moved on again; the reason names the first of these
// that holds: the ticket is gone, someone holds it, it changed, or (for
// stop, restart and signal) the instance is not on this host. A start
// ticket whose instance was written after it, which a claim does not
// overwrite blind, is claimed over the stored record instead (claimOver).
func (s *HostSession) claimFailures(ctx context.Context, ts []Ticket) []ClaimResult {
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
			out[i].Err = fmt.Errorf("%s: %w", what, ErrClaimed)
		default:
			in, derr := decodeInstance(ikv, t.Instance)
			if derr != nil {
				out[i].Err = fmt.Errorf("%s: %w", what, derr)
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
	return fmt.Errorf("%s: instance %q is not on host %q: %w", claimWhat(t.ID), t.Instance, s.id, ErrNotHolder)
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
		return fmt.Errorf("%s: %w", what, ErrTicketChanged)
	}
	s.log.Info("ticket deleted: nothing left to do", "ticket", t.ID, "op", string(t.Op), "instance", t.Instance, "why", why)
	return fmt.Errorf("%s: %w: %s; the ticket is deleted", what, ErrTicketDone, why)
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
			return Instance{}, fmt.Errorf("%s: %w", what, ErrTicketChanged)
		}
		return Instance{}, fmt.Errorf("%s: %w: instance %q is %s, stop ticket %q, replaced by %q: the start is withdrawn",
			what, ErrTicketDone, in.ID, in.State, in.StopTicket, in.ReplacedBy)
	}
	switch in.State {
	case InstancePending, InstanceClaimed, InstanceStarting:
	default:
		return Instance{}, fmt.Errorf("%s: instance %q is %s on %q, not waiting for a start: %w", what, in.ID, in.State, in.Host, ErrTicketChanged)
	}
	next := in
	next.Host, next.State, next.Since, next.Ticket = s.id, InstanceClaimed, time.Now().UTC(), t.ID
	next.PID, next.PIDStart, next.Port, next.ExitCode, next.Signal, next.Reason = 0, 0, 0, nil, "", ""
	resp, err := r.cli.Txn(ctx).If(cmps...).Then(s.startClaimOps(t.ID, next)...).Commit()
	switch {
	case err != nil:
		return Instance{}, s.leaseErr(what, err)
	case !resp.Succeeded:
		return Instance{}, fmt.Errorf("%s: %w, or instance %q is back on live host %q", what, ErrTicketChanged, in.ID, in.Host)
	}
	next.ModRevision = resp.Header.Revision
	s.remember(next)
	return next, nil
}

// holderCmp compares that this session holds the claim of ticket id.
func (s *HostSession) holderCmp(id string) clientv3.Cmp {
	return clientv3.Compare(clientv3.LeaseValue(s.r.claimKey(id)), "=", s.lease)
}

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
