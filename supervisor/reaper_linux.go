package supervisor

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaper waits for the exits of all instances on one epoll set of pidfds,
// from one goroutine: no thread per child, no per-process polling.
type reaper struct {
	epfd   int
	wakefd int // eventfd: wakes the poller for shutdown

	mu      sync.Mutex // guards watches
	watches map[int]watch
}

func newReaper() (*reaper, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll create: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll add eventfd: %w", err)
	}
	return &reaper{epfd: epfd, wakefd: wakefd, watches: make(map[int]watch)}, nil
}

// add watches pidfd; the poller reports it once, when the process exits.
// After close it fails with ErrStopped.
func (r *reaper) add(w watch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watches == nil {
		return fmt.Errorf("watch process: reaper closed: %w", ErrStopped)
	}
	r.watches[w.fd] = w
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(w.fd)}
	if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, w.fd, &ev); err != nil {
		delete(r.watches, w.fd)
		return fmt.Errorf("epoll add pidfd: %w", err)
	}
	return nil
}

// release forgets and closes pidfd fd.
func (r *reaper) release(fd int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.watches[fd]; !ok {
		return
	}
	delete(r.watches, fd)
	_ = unix.EpollCtl(r.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	unix.Close(fd)
}

// wake makes run return once it sees stop.
func (r *reaper) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(r.wakefd, one[:])
}

// run reports exited watches to exited until stop returns true after a
// wake. It blocks one OS thread in epoll_wait.
func (r *reaper) run(stop func() bool, exited func(watch)) error {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(r.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll wait: %w", err)
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == r.wakefd {
				var buf [8]byte
				_, _ = unix.Read(r.wakefd, buf[:])
				if stop() {
					return nil
				}
				continue
			}
			r.mu.Lock()
			w, ok := r.watches[fd]
			r.mu.Unlock()
			if ok {
				exited(w)
			}
		}
	}
}

// close closes the epoll set and every pidfd still watched.
func (r *reaper) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for fd := range r.watches {
		unix.Close(fd)
	}
	r.watches = nil
	unix.Close(r.wakefd)
	unix.Close(r.epfd)
}
