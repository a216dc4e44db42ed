package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/backoff"
)

// Scale writes all its tickets in one transaction when etcd accepts it:
// up to bigScaleChunk tickets, which needs --max-txn-ops of about 3 * 1000
// + 5 (a cancelled start ticket takes 3 compares; the embedded etcd of
// `visor agent -dev` allows 4096). When etcd refuses a transaction as too
// large (too many operations or bytes), the Registry falls back to chunks
// of smallScaleChunk, which fit etcd's default --max-txn-ops of 128, and
// keeps that size from then on (halving further if even that is refused).
const (
	bigScaleChunk   = 1000
	smallScaleChunk = 40
)

// chunk is the current most tickets per Scale transaction.
func (r *Registry) chunk() int {
	if c := r.scaleChunk.Load(); c > 0 {
		return int(c)
	}
	return bigScaleChunk
}

// shrinkChunk records that a transaction of size tickets was too large.
func (r *Registry) shrinkChunk(size int) {
	next := smallScaleChunk
	if size <= smallScaleChunk {
		next = max(1, size/2)
	}
	if r.scaleChunk.Load() == 0 || int(r.scaleChunk.Load()) > next {
		r.scaleChunk.Store(int32(next))
		r.log.Info("etcd refused a scale transaction as too large; using smaller ones",
			"tickets_per_txn", next, "hint", "raise etcd's --max-txn-ops to scale in one transaction")
	}
}

// tooLarge reports an etcd refusal of a transaction's size.
func tooLarge(err error) bool {
	return errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) ||
		errors.Is(err, rpctypes.ErrGRPCTooManyOps) || errors.Is(err, rpctypes.ErrGRPCRequestTooLarge)
}

// errShrunk makes scale retry a step at once with the smaller chunk.
var errShrunk = errors.New("registry: scale transaction too large; retrying smaller")

// scaleSnap is a consistent read of everything Scale counts.
type scaleSnap struct {
	rev                int64
	app, revOK, procOK bool
	scaleMod, genMod   int64
	desired            int
	desiredErr         error      // the stored count does not decode
	pending, live      []Instance // counted instances
	reserve            *Limits    // the proc type's reservation, if it declares one
	revision           revSnap    // the revision record and its release
	status             *ScaleStatus
	statusMod          int64
	deploy             *Deployment // the app's active deployment, if any
	deployMod          int64       // its key's mod revision; 0: none
}

// scaleSnapshot reads, in one transaction, what Scale counts: the scale and
// generation keys and the instances of app/proc. Pending instances are the
// ones whose start ticket is unclaimed (a claim moves the instance to
// claimed, a release back to pending), so no ticket needs reading to count.
func (r *Registry) scaleSnapshot(ctx context.Context, app, rev, proc string) (scaleSnap, error) {
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.revKey(app, rev)),
		clientv3.OpGet(r.procKey(app, proc)),
		clientv3.OpGet(r.scaleKey(app, rev, proc)),
		clientv3.OpGet(r.genKey(app, rev, proc)),
		clientv3.OpGet(r.statusKey(app, rev, proc)),
		// Instance ids start with <app>-<proc>- (newInstanceID), so this
		// range holds every instance of app/proc, plus a few of other
		// app/proc pairs that share the prefix, filtered below.
		clientv3.OpGet(r.instanceKey(app+"-"+proc+"-"), clientv3.WithPrefix()),
		clientv3.OpGet(r.deployingKey(app)),
	).Commit()
	if err != nil {
		return scaleSnap{}, errorf("registry: scale %s/%s/%s: read: %w", app, rev, proc, err)
	}
	s := scaleSnap{
		rev:    resp.Header.Revision,
		app:    resp.Responses[0].GetResponseRange().Count > 0,
		revOK:  resp.Responses[1].GetResponseRange().Count > 0,
		procOK: resp.Responses[2].GetResponseRange().Count > 0,
	}
	if kv := first(rangeKvs(resp, 1)); kv != nil {
		s.revision.mod = kv.ModRevision
		s.revision.rv, s.revision.err = decodeRevision(kv.Key, kv.Value, kv.ModRevision, app, rev)
	}
	if kv := first(rangeKvs(resp, 3)); kv != nil {
		s.scaleMod = kv.ModRevision
		n, err := strconv.Atoi(string(kv.Value))
		if err == nil && n < 0 {
			err = fmt.Errorf("negative count %d", n)
		}
		if err != nil {
			// Scale overwrites it; Rescale, which would re-apply it,
			// refuses (see scaleStep).
			s.desiredErr = corrupt(KindScale, kv.Key, err)
			r.log.Warn("scale value does not decode", "key", string(kv.Key), "error", err)
		}
		s.desired = n
	}
	if kv := first(rangeKvs(resp, 4)); kv != nil {
		s.genMod = kv.ModRevision
	}
	if kv := first(rangeKvs(resp, 2)); kv != nil {
		// A proc type that does not decode reserves the default; the
		// claim's Launch read reports it.
		if p, err := decodeProc(kv.Key, kv.Value, kv.ModRevision, app, proc); err == nil {
			s.reserve = p.reservation()
		}
	}
	if kv := first(rangeKvs(resp, 5)); kv != nil {
		s.statusMod = kv.ModRevision
		var st ScaleStatus
		if err := decodeJSON(KindScaleStatus, kv.Key, kv.Value, &st); err == nil {
			s.status = &st
		} else {
			s.status = &ScaleStatus{} // rewritten or deleted below
		}
	}
	s.deploy, s.deployMod = activeIn(first(rangeKvs(resp, 7)), app)
	for _, kv := range rangeKvs(resp, 6) {
		in, err := decodeInstance(kv, strings.TrimPrefix(string(kv.Key), r.instancesDir()))
		if err != nil {
			// Reported by whoever lists instances (the reconciler, once).
			r.log.Debug("instance value does not decode", "key", string(kv.Key), "error", err)
			continue
		}
		if in.App != app || in.Rev != rev || in.Proc != proc || !in.counted() {
			continue
		}
		if in.State == InstancePending && in.Ticket != "" {
			s.pending = append(s.pending, in)
		} else {
			s.live = append(s.live, in)
		}
	}
	return s, nil
}

// startTickets reads the start tickets of pending instances (for a
// scale-down that cancels them), at most 100 keys per read transaction.
func (r *Registry) startTickets(ctx context.Context, pending []Instance) (map[string]Ticket, error) {
	out := make(map[string]Ticket, len(pending))
	for len(pending) > 0 {
		batch := pending[:min(len(pending), 100)]
		pending = pending[len(batch):]
		ops := make([]clientv3.Op, 0, len(batch))
		for _, in := range batch {
			ops = append(ops, clientv3.OpGet(r.ticketKey(in.Ticket)))
		}
		resp, err := r.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, errorf("registry: read start tickets: %w", err)
		}
		for i, in := range batch {
			kv := first(rangeKvs(resp, i))
			if kv == nil {
				continue
			}
			t, err := decodeTicket(kv, in.Ticket)
			if err != nil || t.Op != TicketStart || t.Instance != in.ID {
				continue
			}
			out[t.ID] = t
		}
	}
	return out, nil
}

// stopRank orders instances for scale-down: not yet running first (claimed,
// starting, backoff), then running; within a rank the newest first.
func stopRank(a, b Instance) bool {
	ra, rb := a.State == InstanceRunning, b.State == InstanceRunning
	if ra != rb {
		return !ra
	}
	if !a.Since.Equal(b.Since) {
		return a.Since.After(b.Since)
	}
	return a.ID > b.ID
}

// Scale sets the desired count of app/rev/proc to n and, in the same
// transaction, creates start tickets (each with a pending instance record)
// or, to scale down, cancels pending unclaimed start tickets (newest first)
// and then creates stop tickets (see doc.go for which instances stop). The
// transaction compares the scale key and the proc's generation key, which
// every change of a counted instance touches, so concurrent Scale calls,
// claims and state updates make it retry rather than overshoot.
//
// A difference larger than 40 is applied in several transactions, each
// re-counting; if another Scale of the same key lands in between, that call
// owns the result and this one returns what it did so far.
//
// n above the fleet's bound (MaxScale) fails with ErrInvalid. Start
// tickets are written only for what the live hosts can take now
// (Fleet.Room); the rest of the count waits, recorded with the reason in
// a ScaleStatus written in the same transaction, and the reconciler
// writes their tickets as room appears. With no live host at all, every
// ticket is written (nothing can be overloaded, and max_scale bounds
// them).
//
// A Scale of the revision an active deployment moves proc to sets the
// deployment's count instead (see scaleOrDeploy).
func (r *Registry) Scale(ctx context.Context, app, rev, proc string, n int) (ScaleResult, error) {
	if n < 0 {
		return ScaleResult{}, fmt.Errorf("%w: scale %d is negative", ErrInvalid, n)
	}
	limit, err := r.MaxScale(ctx)
	if err != nil {
		return ScaleResult{}, err
	}
	if n > limit {
		return ScaleResult{}, fmt.Errorf("%w: scale %d of %s/%s/%s is above the fleet's limit of %d instances per process type (registry key config/max_scale; `visor config max-scale N` sets it)",
			ErrInvalid, n, app, rev, proc, limit)
	}
	return r.scaleOrDeploy(ctx, app, rev, proc, n)
}

// Rescale re-applies the desired count stored for app/rev/proc, creating
// the tickets for any drift (instances that exited, failed or were lost)
// exactly as Scale would, and writes nothing when there is none. The count
// is read inside the same snapshot the transaction compares, so a
// concurrent Scale is never reverted: the reconciler uses this, not Scale.
// A process type that was never scaled is left alone.
func (r *Registry) Rescale(ctx context.Context, app, rev, proc string) (ScaleResult, error) {
	return r.scale(ctx, app, rev, proc, useStored, nil)
}

// RescaleIn is Rescale with the fleet read by the caller: start tickets
// are written only up to f.Room(), and f.Pending grows by the tickets
// written, so one Fleet serves a pass over many scales (the reconciler's).
// A nil f is read when needed.
func (r *Registry) RescaleIn(ctx context.Context, app, rev, proc string, f *Fleet) (ScaleResult, error) {
	return r.scale(ctx, app, rev, proc, useStored, f)
}

// useStored, as a count, makes scale re-apply the stored desired count.
const useStored = -1

func (r *Registry) scale(ctx context.Context, app, rev, proc string, n int, f *Fleet) (ScaleResult, error) {
	if err := validNames("app name", app, "revision name", rev, "process type", proc); err != nil {
		return ScaleResult{}, err
	}
	res := ScaleResult{Desired: n}
	var ours int64 // revision of our last successful write; 0 = none yet
	what := fmt.Sprintf("registry: scale %s/%s/%s", app, rev, proc)
	pause := backoff.Backoff{Policy: conflictBackoff}
	for conflicts := 0; ; {
		done, err := r.scaleStep(ctx, app, rev, proc, n, &res, &ours, &f)
		if errors.Is(err, errShrunk) {
			continue
		}
		if err != nil && transient(err) && ctx.Err() == nil && conflicts < maxAttempts-1 {
			// An overloaded etcd timed the request out; it may or may not
			// have applied. Scale re-counts, so trying again is safe: a
			// landed write is seen as "nothing to do".
			r.log.Warn("scale: etcd request timed out, retrying", "app", app, "rev", rev, "proc", proc, "error", err)
			conflicts++
			if err := pause.Wait(ctx); err != nil {
				return res, errorf("%s: %w", what, err)
			}
			continue
		}
		if err != nil || done {
			return res, err
		}
		if ours < 0 {
			// A chunk landed; go on with the next one.
			ours = -ours
			continue
		}
		conflicts++
		if conflicts >= maxAttempts {
			return res, errorf("%s: %w", what, ErrConflict)
		}
		if err := pause.Wait(ctx); err != nil {
			return res, errorf("%s: %w", what, err)
		}
	}
}

// scaleStep runs one Scale transaction. It reports done when the scale is
// in place or superseded; on a landed partial chunk it sets *ours to minus
// the write's revision; on a conflict it leaves *ours alone.
func (r *Registry) scaleStep(ctx context.Context, app, rev, proc string, n int, res *ScaleResult, ours *int64, fleet **Fleet) (bool, error) {
	what := fmt.Sprintf("registry: scale %s/%s/%s", app, rev, proc)
	s, err := r.scaleSnapshot(ctx, app, rev, proc)
	if err != nil {
		return false, err
	}
	switch {
	case !s.app:
		return false, fmt.Errorf("%w: app %q", ErrNotFound, app)
	case !s.revOK:
		return false, fmt.Errorf("%w: revision %q of app %q", ErrNotFound, rev, app)
	}
	if err := r.scaleRevision(ctx, &s, app, rev, proc, n); err != nil {
		return false, err
	}
	if *ours != 0 && s.scaleMod != *ours {
		return true, nil // superseded by a later Scale
	}
	if n != useStored && *ours == 0 && s.deploy != nil && s.deploy.targets(rev, proc) {
		return false, errDeploying
	}
	if n == useStored {
		if s.scaleMod == 0 {
			return true, nil // never scaled: nothing to re-apply
		}
		if s.desiredErr != nil {
			return false, errorf("%s: %w", what, s.desiredErr)
		}
		n = s.desired
		res.Desired = n
	}
	if *ours == 0 {
		res.Live, res.Pending = len(s.live), len(s.pending)
	}
	p, err := r.planScale(ctx, &s, scaleTarget{app, rev, proc, n}, fleet)
	if err != nil {
		return false, errorf("%s: %w", what, err)
	}
	if p.add == 0 && p.diff >= 0 && p.statusSame && s.scaleMod != 0 && s.desired == n && s.desiredErr == nil && s.revision.release == nil {
		res.Waiting, res.Reason = p.diff, p.reason
		return true, nil // in place, or nothing more can be admitted now
	}
	c, err := r.scaleTxn(ctx, &s, p)
	if err != nil {
		return false, err
	}
	resp, err := r.cli.Txn(ctx).If(c.cmps...).Then(c.then...).Commit()
	if err != nil && tooLarge(err) && p.chunk > 1 {
		r.shrinkChunk(p.chunk)
		return false, errShrunk
	}
	if err != nil {
		return false, errorf("%s: %w", what, err)
	}
	if !resp.Succeeded {
		r.log.Debug("scale conflict, retrying", "app", app, "rev", rev, "proc", proc)
		return false, nil
	}
	res.Released = res.Released || s.revision.release != nil
	res.Started = append(res.Started, c.started...)
	res.Stopped = append(res.Stopped, c.stopped...)
	res.Cancelled = append(res.Cancelled, c.cancelled...)
	if f := *fleet; f != nil && len(c.started) > 0 {
		f.addPending(app, rev, proc, s.reserve, len(c.started))
	}
	if p.partial {
		*ours = -resp.Header.Revision
		return false, nil
	}
	res.Waiting, res.Reason = max(p.diff-p.add, 0), p.reason
	*ours = resp.Header.Revision
	return true, nil
}

// scaleTarget is the scale a step works toward: count n of app/rev/proc.
type scaleTarget struct {
	app, rev, proc string
	n              int
}

// scalePlan is what one Scale step writes, decided on its snapshot.
type scalePlan struct {
	scaleTarget
	have       int          // counted instances (live and pending)
	diff       int          // n - have
	chunk      int          // most tickets per transaction
	add        int          // start tickets to write in this step
	partial    bool         // more steps follow this one
	reason     string       // why instances wait, if some do
	status     *ScaleStatus // the status to store; nil: none waits
	statusSame bool         // the stored status needs no write
}

// planScale decides a step toward target on snapshot s: starts only for
// the fleet's room (read into *fleet when first needed), at most a chunk
// of tickets, and the status of what waits.
func (r *Registry) planScale(ctx context.Context, s *scaleSnap, target scaleTarget, fleet **Fleet) (scalePlan, error) {
	p := scalePlan{scaleTarget: target, have: len(s.live) + len(s.pending), chunk: r.chunk()}
	p.diff = p.n - p.have
	// Starts: only what the fleet has room for; the rest waits.
	want := max(p.diff, 0)
	if p.diff > 0 {
		if *fleet == nil {
			f, err := r.Fleet(ctx)
			if err != nil {
				return p, err
			}
			*fleet = &f
		}
		// The fleet may be older than the snapshot (the reconciler reads
		// it once per pass): this scale's own instances are counted from
		// the snapshot, the others' from the fleet.
		if room := (*fleet).For(p.app, p.rev, p.proc); room >= 0 && (*fleet).Hosts > 0 && room-p.have < want {
			free := max(0, room-p.have)
			// The reason as it is once the admitted tickets are written.
			after := **fleet
			after.Pending += free + p.have - after.Takes[p.app+"/"+p.rev+"/"+p.proc]
			want, p.reason = free, after.Reason()
		}
		// Free slots are not enough: the hosts' memory and CPU must take
		// the instances' reservations too (else their tickets would wait
		// unclaimed, with no reason given).
		if room, why := (*fleet).Fits(p.app, p.rev, p.proc, s.reserve, p.have); why != "" && room < want {
			want, p.reason = room, why
		}
	}
	p.add = min(want, p.chunk)
	p.partial = want > p.chunk || -p.diff > p.chunk
	// The status says what waits, written with the tickets (not while
	// more chunks follow).
	if waiting := p.diff - p.add; waiting > 0 && !p.partial {
		p.status = &ScaleStatus{App: p.app, Rev: p.rev, Proc: p.proc, Desired: p.n, Admitted: p.have + p.add,
			Waiting: waiting, Reason: p.reason, Since: time.Now().UTC()}
		if s.status != nil && !s.status.Since.IsZero() {
			p.status.Since = s.status.Since
		}
	}
	p.statusSame = p.partial || (p.status == nil && s.status == nil) ||
		(p.status != nil && s.status != nil && p.status.same(*s.status))
	return p, nil
}

// scaleTxn is one Scale transaction, with the tickets it writes or
// cancels.
type scaleTxn struct {
	txn
	started, stopped, cancelled []string
}

// scaleTxn builds the transaction of plan p on snapshot s: the app, the
// revision and the process type exist, the scale, generation (and, when
// rewritten, status) keys are as read; then the count, the generation
// key, the status, and the start tickets, cancellations and stop tickets.
func (r *Registry) scaleTxn(ctx context.Context, s *scaleSnap, p scalePlan) (scaleTxn, error) {
	app, rev, proc := p.app, p.rev, p.proc
	c := scaleTxn{txn: txn{
		cmps: []clientv3.Cmp{
			exists(r.appKey(app)),
			unchanged(r.scaleKey(app, rev, proc), s.scaleMod),
			unchanged(r.genKey(app, rev, proc), s.genMod),
			unchanged(r.deployingKey(app), s.deployMod), // see scaleOrDeploy
		},
		then: []clientv3.Op{
			clientv3.OpPut(r.scaleKey(app, rev, proc), strconv.Itoa(p.n)),
			touch(r.genKey(app, rev, proc)),
		},
	}}
	c.cmps, c.then = r.revisionTxn(s, app, rev, proc, c.cmps, c.then)
	if !p.statusSame {
		c.cmps = append(c.cmps, unchanged(r.statusKey(app, rev, proc), s.statusMod))
		if p.status != nil {
			c.then = append(c.then, clientv3.OpPut(r.statusKey(app, rev, proc), encode(*p.status)))
		} else {
			c.then = append(c.then, clientv3.OpDelete(r.statusKey(app, rev, proc)))
		}
	}
	now := time.Now().UTC()
	for range p.add {
		t := Ticket{ID: newTicketID(), Op: TicketStart, App: app, Rev: rev, Proc: proc,
			Instance: newInstanceID(app, proc), Reserve: s.reserve, MaxAttempts: 3, Created: now}
		in := Instance{ID: t.Instance, App: app, Rev: rev, Proc: proc, State: InstancePending,
			Since: now, Ticket: t.ID, Created: now, Reserve: s.reserve}
		c.then = append(c.then, clientv3.OpPut(r.ticketKey(t.ID), encode(t)),
			clientv3.OpPut(r.instanceKey(in.ID), encode(in)))
		c.started = append(c.started, t.ID)
	}
	if p.diff < 0 {
		if err := r.scaleDown(ctx, &c, s, p, now); err != nil {
			return c, err
		}
	}
	return c, nil
}

// scaleDown adds to c the removal of up to a chunk of the -p.diff
// instances too many: first pending start tickets, newest first, deleted
// with their pending instances if still unclaimed; then stop tickets for
// live instances in stopRank order.
func (r *Registry) scaleDown(ctx context.Context, c *scaleTxn, s *scaleSnap, p scalePlan, now time.Time) error {
	budget := min(-p.diff, p.chunk)
	// Newest pending start tickets first: ticket ids sort by time.
	sort.Slice(s.pending, func(i, j int) bool { return s.pending[i].Ticket > s.pending[j].Ticket })
	tickets, err := r.startTickets(ctx, s.pending[:min(len(s.pending), budget)])
	if err != nil {
		return err
	}
	for _, in := range s.pending {
		if budget == 0 {
			break
		}
		t, ok := tickets[in.Ticket]
		if !ok {
			continue // claimed or gone meanwhile: it counts as live next time
		}
		c.cmps = append(c.cmps, unchanged(r.ticketKey(t.ID), t.ModRevision), absent(r.claimKey(t.ID)),
			unchanged(r.instanceKey(in.ID), in.ModRevision))
		c.then = append(c.then, clientv3.OpDelete(r.ticketKey(t.ID)), clientv3.OpDelete(r.instanceKey(in.ID)))
		c.cancelled = append(c.cancelled, t.ID)
		budget--
	}
	sort.Slice(s.live, func(i, j int) bool { return stopRank(s.live[i], s.live[j]) })
	for _, in := range s.live {
		if budget == 0 {
			break
		}
		t := Ticket{ID: newTicketID(), Op: TicketStop, App: p.app, Rev: p.rev, Proc: p.proc,
			Instance: in.ID, Host: in.Host, MaxAttempts: 3, Created: now}
		in.StopTicket = t.ID
		c.cmps = append(c.cmps, unchanged(r.instanceKey(in.ID), in.ModRevision))
		c.then = append(c.then, clientv3.OpPut(r.ticketKey(t.ID), encode(t)),
			clientv3.OpPut(r.instanceKey(in.ID), encode(in)))
		c.stopped = append(c.stopped, t.ID)
		budget--
	}
	return nil
}
