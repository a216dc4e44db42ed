package supervisor

import "sync"

// notifier delivers state changes to the StateHandler in order, from one
// goroutine, so that a slow handler never blocks the reaper or a timer.
type notifier struct {
	h    StateHandler
	wake chan struct{} // capacity 1

	mu sync.Mutex // guards q
	q  []Status
}

// push queues st; it never blocks.
func (n *notifier) push(st Status) {
	n.mu.Lock()
	n.q = append(n.q, st)
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
	}
}
