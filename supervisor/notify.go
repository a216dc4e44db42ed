package supervisor

import (
	"context"
	"sync"
)

// StateHandler receives every state change of every instance. It is
// implemented by the caller (the agent).
type StateHandler interface {
	// InstanceStateChanged is called in order per instance, from one
	// supervisor goroutine; it must not block.
	InstanceStateChanged(id string, st Status)
}

// notifier delivers state changes to the StateHandler in order, from one
// goroutine, so that a slow handler never blocks the reaper or a timer.
type notifier struct {
	h    StateHandler
	wake chan struct{} // capacity 1

	mu        sync.Mutex // guards the fields below
	q         []Status
	pushed    uint64        // changes queued so far
	delivered uint64        // changes handed to h so far
	progress  chan struct{} // closed and replaced after each delivered batch
}

func newNotifier(h StateHandler) *notifier {
	return &notifier{h: h, wake: make(chan struct{}, 1), progress: make(chan struct{})}
}

// push queues st; it never blocks.
func (n *notifier) push(st Status) {
	n.mu.Lock()
	n.q = append(n.q, st)
	n.pushed++
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// run delivers queued changes until stop is closed, then delivers the rest.
func (n *notifier) run(stop <-chan struct{}) {
	for {
		select {
		case <-n.wake:
			n.drain()
		case <-stop:
			n.drain()
			return
		}
	}
}

func (n *notifier) drain() {
	for {
		n.mu.Lock()
		batch := n.q
		n.q = nil
		n.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		for _, st := range batch {
			n.h.InstanceStateChanged(st.ID, st)
		}
		n.mu.Lock()
		n.delivered += uint64(len(batch))
		close(n.progress)
		n.progress = make(chan struct{})
		n.mu.Unlock()
	}
}

// wait returns once every change queued before the call has been handed
// to the handler, or with ctx's error.
func (n *notifier) wait(ctx context.Context) error {
	n.mu.Lock()
	target := n.pushed
	n.mu.Unlock()
	for {
		n.mu.Lock()
		done, ch := n.delivered >= target, n.progress
		n.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Notified returns once the Handler has been given every state change
// made before the call (changes reach it from a goroutine of their own,
// so a Stop or Restart may return before its last change is delivered),
// or with ctx's error. Without a Handler it returns at once.
func (s *Supervisor) Notified(ctx context.Context) error {
	if s.notes == nil {
		return nil
	}
	return s.notes.wait(ctx)
}
