package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// writerWorkers is how many instance states are written to etcd at once.
const writerWorkers = 16

// A write that fails for a reason that may pass (etcd leader change,
// request timeout, registry.ErrConflict) is tried again after a backoff of
// its own instance: writeRetryMin, doubling up to writeRetryMax, each
// delay shortened by up to half at random (so instances that failed
// together spread their retries), reset by a successful write.
const (
	writeRetryMin = 100 * time.Millisecond
	writeRetryMax = 3 * time.Second
)

var writeRetry = backoff.Policy{Initial: writeRetryMin, Max: writeRetryMax, Jitter: backoff.HalfJitter}

// flushOneTimeout bounds how long flushOne waits for an instance's state
// to be written: a ticket executor waiting on a write that keeps failing
// goes on after it (the write itself is still retried), rather than being
// stuck until the session ends.
const flushOneTimeout = 5 * time.Second

// writeResult is what finish does after a write.
type writeResult int

const (
	// writeDone: the write landed, or was dropped for good.
	writeDone writeResult = iota
	// writeRetryLater: the write failed and is tried again after the
	// instance's backoff.
	writeRetryLater
	// writeRetrySession: the write failed because there is no usable
	// session; it is tried again with the next one (requeueDirty).
	writeRetrySession
)

// stateWriter writes supervisor state changes to the registry. It keeps
// only the latest status per instance, so a burst of transitions (starting,
// running) collapses into fewer writes, and nothing is lost while etcd is
// unreachable: dirty instances are written again once a session is back.
// A write that fails otherwise is tried again after a per-instance backoff
// (a timer of run's), or dropped when the registry refuses the transition
// for good. Writes for one instance are never concurrent, so they stay in
// order.
type stateWriter struct {
	writerDeps

	mu       sync.Mutex // guards everything below
	latest   map[string]supervisor.Status
	dirty    map[string]bool // instance needs a write
	queued   map[string]bool // instance is in queue
	queue    []string
	busy     map[string]bool            // a worker is writing it
	tickets  map[string]registry.Ticket // start tickets completing with the instance's first running state
	replaced map[string]bool            // instances another host holds now: never written again
	endpoint map[string]bool            // instances registered as service endpoints
	progress chan struct{}              // closed and replaced after every write
	// retryAt holds the instances waiting out a backoff after a failed
	// write; run queues them when it is due. retryDelay counts the failed
	// writes of an instance (its backoff attempt), until one succeeds.
	retryAt    map[string]time.Time
	retryDelay map[string]int

	kick chan struct{}
}

func newStateWriter(d writerDeps) *stateWriter {
	return &stateWriter{
		writerDeps: d,
		latest:     make(map[string]supervisor.Status),
		dirty:      make(map[string]bool),
		queued:     make(map[string]bool),
		busy:       make(map[string]bool),
		tickets:    make(map[string]registry.Ticket),
		replaced:   make(map[string]bool),
		endpoint:   make(map[string]bool),
		progress:   make(chan struct{}),
		kick:       make(chan struct{}, 1),

		retryAt:    make(map[string]time.Time),
		retryDelay: make(map[string]int),
	}
}

func (w *stateWriter) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// enqueue marks id dirty and queues it, unless it waits out a backoff
// after a failed write (run queues it when that is due). Caller holds w.mu.
func (w *stateWriter) enqueue(id string) {
	w.dirty[id] = true
	if _, waiting := w.retryAt[id]; waiting {
		return
	}
	if !w.queued[id] && !w.busy[id] {
		w.queued[id] = true
		w.queue = append(w.queue, id)
	}
}

// update records st as the latest status of id. It never blocks.
func (w *stateWriter) update(id string, st supervisor.Status) {
	w.mu.Lock()
	if w.replaced[id] {
		w.mu.Unlock()
		return
	}
	w.latest[id] = st
	w.enqueue(id)
	w.mu.Unlock()
	w.poke()
}

// touch queues id to be written again with its latest status.
func (w *stateWriter) touch(id string) {
	w.mu.Lock()
	if _, ok := w.latest[id]; ok {
		w.enqueue(id)
	}
	w.mu.Unlock()
	w.poke()
}

// drop forgets id for good: another host holds it now, and the local
// copy's remaining transitions (stopping, exited) are not the registry's.
// It reports whether id was not dropped before.
func (w *stateWriter) drop(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.replaced[id] {
		return false
	}
	w.replaced[id] = true
	delete(w.latest, id)
	delete(w.dirty, id)
	delete(w.tickets, id)
	delete(w.retryAt, id)
	delete(w.retryDelay, id)
	return true
}

// expect registers start ticket t to be completed together with the first
// running (or terminal) state of instance id.
func (w *stateWriter) expect(id string, t registry.Ticket) {
	w.mu.Lock()
	w.tickets[id] = t
	// This host claimed the instance's start ticket: it is ours again,
	// whatever an earlier copy of it was.
	delete(w.replaced, id)
	delete(w.endpoint, id)
	w.mu.Unlock()
}

func (w *stateWriter) unexpect(id string) {
	w.mu.Lock()
	delete(w.tickets, id)
	w.mu.Unlock()
}

// requeueDirty queues every dirty instance (after a session change), those
// waiting out a backoff included: a new session is worth a try at once.
func (w *stateWriter) requeueDirty() {
	w.mu.Lock()
	clear(w.retryAt)
	for id, d := range w.dirty {
		if d {
			w.enqueue(id)
		}
	}
	w.mu.Unlock()
}

// retryDue queues the instances whose backoff ended by now, and returns
// when the next one ends (ok false if none waits).
func (w *stateWriter) retryDue(now time.Time) (next time.Time, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, at := range w.retryAt {
		if at.After(now) {
			if !ok || at.Before(next) {
				next, ok = at, true
			}
			continue
		}
		delete(w.retryAt, id)
		if w.dirty[id] {
			w.enqueue(id)
		}
	}
	return next, ok
}

// run dispatches dirty instances to workers until ctx ends. Should be
// started in a goroutine; returns after its workers exit. It owns the timer
// that ends the backoffs of failed writes, and stops it on return.
func (w *stateWriter) run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	jobs := make(chan string)
	var wg sync.WaitGroup
	for i := 0; i < writerWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range jobs {
				w.write(ctx, id)
			}
		}()
	}
	defer wg.Wait()
	defer close(jobs)
	for {
		var retryC <-chan time.Time
		if at, ok := w.retryDue(time.Now()); ok {
			retry.Reset(time.Until(at))
			retryC = retry.C
		} else {
			retry.Stop()
		}
		s, changed := w.session()
		var out chan string
		var next string
		if s != nil {
			next = w.take()
		}
		if next != "" {
			out = jobs
		}
		select {
		case out <- next:
			w.sent()
			next = ""
		case <-w.kick:
		case <-retryC: // retryDue queues what is due
		case <-changed:
			w.requeueDirty()
		case <-ctx.Done():
			w.putBack(next)
			return
		}
		w.putBack(next)
	}
}

// take returns the instance at the head of the queue ("" if none),
// marked busy and no longer queued, though it stays at the head until the
// dispatcher hands it to a worker (sent) or gives it back (putBack); only
// the dispatcher pops the queue, so the head stays put meanwhile. It is
// marked before it reaches a worker: the worker's write may end before
// the dispatcher runs again, and its finish must find it busy and not
// queued (so that a newer state is queued again). Heads being written
// already are dropped (finish requeues them).
func (w *stateWriter) take() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.queue) > 0 {
		id := w.queue[0]
		if w.busy[id] {
			w.queue = w.queue[1:]
			w.queued[id] = false
			continue
		}
		w.busy[id] = true
		w.queued[id] = false
		return id
	}
	return ""
}

// sent pops the head of the queue, which take returned: a worker has it.
func (w *stateWriter) sent() {
	w.mu.Lock()
	w.queue = w.queue[1:]
	w.mu.Unlock()
}

// putBack undoes take for an instance no worker got: it is queued again,
// still at the head.
func (w *stateWriter) putBack(id string) {
	if id == "" {
		return
	}
	w.mu.Lock()
	w.busy[id] = false
	w.queued[id] = true
	w.mu.Unlock()
}

// retrySession is the outcome of a write that needs a session other than
// began (nil: there was none): wait for the next session change, or, if
// one came while the write was under way (its requeue skipped the busy
// instance), try again after the usual short backoff.
func (w *stateWriter) retrySession(began writerSession) writeResult {
	if cur := w.currentSession(); cur != nil && cur != began {
		return writeRetryLater
	}
	return writeRetrySession
}

// write writes the latest status of id with the current session.
func (w *stateWriter) write(ctx context.Context, id string) {
	w.mu.Lock()
	st, ok := w.latest[id]
	t, hasTicket := w.tickets[id]
	w.dirty[id] = false
	w.mu.Unlock()

	res := writeDone
	defer func() { w.finish(id, res) }()
	if !ok {
		return
	}
	s := w.currentSession()
	if s == nil {
		res = w.retrySession(nil)
		return
	}
	inst := toInstance(w.host, st)
	var err error
	completing := hasTicket && (st.State == supervisor.StateRunning || st.State.Terminal())
	if completing {
		err = s.CompleteWith(ctx, t, inst)
		if errors.Is(err, registry.ErrTicketDone) || errors.Is(err, registry.ErrNotFound) {
			err = s.UpdateInstance(ctx, inst)
		}
		if err == nil {
			w.unexpect(id)
			w.ticketToRunning.Observe(time.Since(t.Created).Seconds())
		}
	} else {
		err = s.UpdateInstance(ctx, inst)
	}
	switch {
	case err == nil:
		w.syncEndpoint(ctx, s, st)
	case errors.Is(err, registry.ErrNotHolder) && !w.replacedElsewhere(ctx, id):
		// Our lease ended under us (the claim or index went with it) but the
		// instance is still ours: write it again with the next session,
		// after adoption re-binds it.
		w.log.Debug("write refused with an ended lease; retrying with the next session", "instance", id)
		res = w.retrySession(s)
	case errors.Is(err, registry.ErrNotHolder):
		// Replaced or marked lost while we were away: this copy must go.
		if w.drop(id) {
			w.log.Info("instance no longer held by this host; stopping it", "instance", id)
			w.onReplaced(id)
		}
	case ctx.Err() != nil:
	case errors.Is(err, registry.ErrTransition):
		res = w.refused(ctx, id, st, err)
		if res == writeDone && hasTicket {
			// The record cannot take this state (it ended meanwhile,
			// say stopped before it started): the start ticket is over
			// all the same, and must not stay claimed by this host.
			if cerr := s.Complete(ctx, t); cerr == nil || errors.Is(cerr, registry.ErrTicketDone) {
				w.unexpect(id)
			} else {
				w.log.Warn("complete start ticket of a refused outcome", "instance", id, "ticket", t.ID, "error", cerr)
			}
		}
	default:
		w.log.Warn("write instance state; retrying after a backoff", "instance", id, "state", string(st.State), "error", err)
		res = writeRetryLater
	}
}

// refused handles a write the registry refused as an invalid transition
// (registry.ErrTransition): the stored record cannot take this state, and
// will not later either (terminal states are final), so retrying would
// fail forever. The stored record is read again to confirm the refusal was
// made on it; then the pending write is dropped (the next state change is
// written as usual). Only when the record cannot be read is the write tried
// again after a backoff.
func (w *stateWriter) refused(ctx context.Context, id string, st supervisor.Status, err error) writeResult {
	stored, rerr := w.instances.Instance(ctx, id)
	switch {
	case rerr == nil && stored.State.Terminal() && !st.State.Terminal():
		// The registry has ended it (a stop handled while its start was
		// still under way, a start withdrawn elsewhere) while it runs
		// here: nothing would count or stop this copy, so it goes.
		w.log.Warn("registry has ended an instance that runs here; stopping it",
			"instance", id, "state", string(st.State), "stored_state", string(stored.State), "reason", stored.Reason)
		if w.drop(id) {
			w.onReplaced(id)
		}
	case rerr == nil:
		w.log.Warn("registry refuses the instance's state change; dropping the write",
			"instance", id, "state", string(st.State), "stored_state", string(stored.State), "stored_host", stored.Host, "error", err)
	case errors.Is(rerr, registry.ErrNotFound):
		w.log.Warn("registry refuses the instance's state change and holds no record of it now; dropping the write",
			"instance", id, "state", string(st.State), "error", err)
	case ctx.Err() != nil:
	default:
		w.log.Warn("write instance state refused, and the stored record cannot be read; retrying after a backoff",
			"instance", id, "state", string(st.State), "error", err, "read_error", rerr)
		return writeRetryLater
	}
	return writeDone
}

// syncEndpoint registers a running instance as a service endpoint (bound
// to the host lease) and deregisters it when it stops running.
func (w *stateWriter) syncEndpoint(ctx context.Context, s writerSession, st supervisor.Status) {
	w.mu.Lock()
	registered := w.endpoint[st.ID]
	w.mu.Unlock()
	running := st.State == supervisor.StateRunning
	if running == registered {
		return
	}
	var err error
	if running {
		err = w.endpoints.Put(ctx, instanceEndpoint(w.host, w.addr, st), s.Lease())
	} else {
		err = w.endpoints.Delete(ctx, discovery.ServiceName(st.Meta[metaApp], st.Meta[metaProc]), st.ID)
	}
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("sync service endpoint", "instance", st.ID, "error", err)
		}
		return
	}
	w.mu.Lock()
	w.endpoint[st.ID] = running
	w.mu.Unlock()
}

// finish ends a write of id. A failed write waits out the instance's
// backoff (run queues it again when it ends) or the next session; after a
// write that landed or was dropped, the backoff is reset and a newer
// status that arrived meanwhile is queued at once.
func (w *stateWriter) finish(id string, res writeResult) {
	w.mu.Lock()
	w.busy[id] = false
	switch {
	case w.replaced[id]:
		// Dropped meanwhile: nothing more to write.
	case res == writeRetryLater:
		w.dirty[id] = true
		w.retryDelay[id]++
		w.retryAt[id] = time.Now().Add(writeRetry.Jittered(writeRetry.Delay(w.retryDelay[id]), nil))
	case res == writeRetrySession:
		w.dirty[id] = true
	default:
		delete(w.retryDelay, id)
		if w.dirty[id] {
			w.enqueue(id)
		}
	}
	close(w.progress)
	w.progress = make(chan struct{})
	w.mu.Unlock()
	w.poke()
}

// pending reports whether id (or, with id "", any instance) still waits for
// a write, and returns a channel closed at the next write.
func (w *stateWriter) pending(id string) (bool, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if id != "" {
		return w.dirty[id] || w.busy[id], w.progress
	}
	for k := range w.latest {
		if w.dirty[k] || w.busy[k] {
			return true, w.progress
		}
	}
	return false, w.progress
}

// flushOne waits until id's latest status is written (or dropped), the
// session is gone, ctx ends, or flushOneTimeout passes: a write that keeps
// failing is retried by the writer, but a ticket executor does not wait for
// it longer than that.
func (w *stateWriter) flushOne(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, flushOneTimeout)
	defer cancel()
	w.flushWait(ctx, id)
}

// flush waits until every status is written, the session is gone, or ctx
// ends.
func (w *stateWriter) flush(ctx context.Context) { w.flushWait(ctx, "") }

// flushWait waits until id (or, with id "", every instance) has no write
// pending, the session is gone, or ctx ends.
func (w *stateWriter) flushWait(ctx context.Context, id string) {
	for {
		if ctx.Err() != nil {
			return
		}
		p, ch := w.pending(id)
		if !p || w.currentSession() == nil {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// replacedElsewhere reports whether the registry gives instance id to
// another host, or marks it lost or gone: then this host's copy must stop.
// An instance that still names this host was refused only because our
// lease ended; it is not replaced. When the registry cannot be read, the
// answer is no: never stop a process on a guess.
func (w *stateWriter) replacedElsewhere(ctx context.Context, id string) bool {
	in, err := w.instances.Instance(ctx, id)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return true
	case err != nil:
		return false
	}
	return in.Host != w.host || in.State == registry.InstanceLost
}
