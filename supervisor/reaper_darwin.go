package supervisor

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaper waits for the exits of all instances on one kqueue (EVFILT_PROC,
// NOTE_EXIT), from one goroutine: no thread per child, no polling.
type reaper struct {
	kq int

	mu      sync.Mutex // guards watches and gone
	watches map[int]watch
	gone    []int // handles whose process was gone when added
}

func newReaper() (*reaper, error) {
	kq, err := unix.Kqueue()
	if err != nil {
		return nil, fmt.Errorf("kqueue: %w", err)
	}
	ev := unix.Kevent_t{Ident: 0, Filter: unix.EVFILT_USER, Flags: unix.EV_ADD | unix.EV_CLEAR}
	if _, err := unix.Kevent(kq, []unix.Kevent_t{ev}, nil, nil); err != nil {
		unix.Close(kq)
		return nil, fmt.Errorf("kqueue user event: %w", err)
	}
	return &reaper{kq: kq, watches: make(map[int]watch)}, nil
}

// add watches w's process; the poller reports it once, when it exits.
// After close it fails with ErrStopped.
func (r *reaper) add(w watch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watches == nil {
		return fmt.Errorf("watch process: reaper closed: %w", ErrStopped)
	}
	r.watches[w.fd] = w
	ev := unix.Kevent_t{Ident: uint64(w.fd), Filter: unix.EVFILT_PROC, Flags: unix.EV_ADD | unix.EV_ONESHOT, Fflags: unix.NOTE_EXIT}
	_, err := unix.Kevent(r.kq, []unix.Kevent_t{ev}, nil, nil)
	switch {
	case errors.Is(err, syscall.ESRCH):
		// Already gone (or a zombie): report it from the poller.
		r.gone = append(r.gone, w.fd)
		r.trigger()
	case err != nil:
		delete(r.watches, w.fd)
		return fmt.Errorf("kqueue add process: %w", err)
	}
	return nil
}

// release forgets handle fd.
func (r *reaper) release(fd int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.watches[fd]; !ok {
		return
	}
	delete(r.watches, fd)
	ev := unix.Kevent_t{Ident: uint64(fd), Filter: unix.EVFILT_PROC, Flags: unix.EV_DELETE}
	_, _ = unix.Kevent(r.kq, []unix.Kevent_t{ev}, nil, nil)
}

func (r *reaper) trigger() {
	ev := unix.Kevent_t{Ident: 0, Filter: unix.EVFILT_USER, Fflags: unix.NOTE_TRIGGER}
	_, _ = unix.Kevent(r.kq, []unix.Kevent_t{ev}, nil, nil)
}

// wake makes run return once it sees stop.
func (r *reaper) wake() { r.trigger() }

// run reports exited watches to exited until stop returns true after a
// wake. It blocks one OS thread in kevent.
func (r *reaper) run(stop func() bool, exited func(watch)) error {
	events := make([]unix.Kevent_t, 64)
	for {
		n, err := unix.Kevent(r.kq, nil, events, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("kevent: %w", err)
		}
		var ready []watch
		r.mu.Lock()
		for _, ev := range events[:n] {
			if ev.Filter == unix.EVFILT_USER {
				continue
			}
			if w, ok := r.watches[int(ev.Ident)]; ok {
				ready = append(ready, w)
			}
		}
		for _, fd := range r.gone {
			if w, ok := r.watches[fd]; ok {
				ready = append(ready, w)
			}
		}
		r.gone = nil
		r.mu.Unlock()
		for _, w := range ready {
			exited(w)
		}
		if stop() {
			return nil
		}
	}
}

// close closes the kqueue.
func (r *reaper) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watches = nil
	unix.Close(r.kq)
}
