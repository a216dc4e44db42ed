//go:build linux

package logfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Watch masks used by the Rotator and by Follow.
const (
	maskRotator = unix.IN_MODIFY
	maskFollow  = unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_MOVED_FROM
)

// event is one inotify event: the watch it belongs to and the name of the
// entry inside the watched directory. overflow means events were lost and
// everything must be rescanned.
type event struct {
	wd       int
	name     string
	overflow bool
	ignored  bool
}

// watcher is an inotify instance read through the Go poller, so a read can
// be interrupted by a deadline instead of a polling loop.
//
// When no inotify instance can be had (fs.inotify.max_user_instances
// reached), the watcher degrades to a ticker: every read reports an
// overflow after fallbackTick, which makes callers rescan.
type watcher struct {
	fd  int      // raw descriptor for inotify_add_watch; f owns it
	f   *os.File // nil in ticker mode
	buf []byte
}

// fallbackTick is the rescan period of a watcher without inotify.
const fallbackTick = 2 * time.Second

// newWatcher returns an inotify watcher, or a ticker watcher and the
// reason inotify is unavailable.
func newWatcher() (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return tickWatcher(), fmt.Errorf("inotify init: %w", err)
	}
	return &watcher{fd: fd, f: os.NewFile(uintptr(fd), "inotify"), buf: make([]byte, 64<<10)}, nil
}

// add watches dir and returns the watch descriptor.
func (w *watcher) add(dir string, mask uint32) (int, error) {
	if w.f == nil {
		return 0, nil
	}
	wd, err := unix.InotifyAddWatch(w.fd, dir, mask)
	if err != nil {
		return -1, fmt.Errorf("inotify watch %q: %w", dir, err)
	}
	return wd, nil
}

// remove drops a watch; errors (the watch is already gone) are ignored.
func (w *watcher) remove(wd int) {
	if w.f != nil {
		_, _ = unix.InotifyRmWatch(w.fd, uint32(wd))
	}
}

func (w *watcher) close() error {
	if w.f == nil {
		return nil
	}
	return w.f.Close()
}

// interruptOn makes a pending or future read return once ctx is done. The
// returned function must be called before the watcher is closed; it waits
// for the interrupting callback if that already started.
func (w *watcher) interruptOn(ctx context.Context) (stop func()) {
	if w.f == nil {
		return func() {}
	}
	done := make(chan struct{})
	stopFn := context.AfterFunc(ctx, func() {
		defer close(done)
		_ = w.f.SetReadDeadline(time.Unix(1, 0))
	})
	return func() {
		if !stopFn() {
			<-done
		}
	}
}

// read blocks until events arrive, timeout passes (nil, nil) or ctx is done
// (ctx.Err()). interruptOn(ctx) must be active.
func (w *watcher) read(ctx context.Context, timeout time.Duration) ([]event, error) {
	if w.f == nil {
		t := time.NewTimer(min(timeout, fallbackTick))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return []event{{overflow: true}}, nil
		}
	}
	if err := w.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("inotify deadline: %w", err)
	}
	// Checked after setting the deadline: if ctx ended before, we return
	// here; if after, its callback resets the deadline into the past.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n, err := w.f.Read(w.buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("inotify read: %w", err)
	}
	var evs []event
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		raw := (*unix.InotifyEvent)(unsafe.Pointer(&w.buf[off]))
		nameBytes := w.buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(raw.Len)]
		off += unix.SizeofInotifyEvent + int(raw.Len)
		ev := event{
			wd:       int(raw.Wd),
			overflow: raw.Mask&unix.IN_Q_OVERFLOW != 0,
			ignored:  raw.Mask&unix.IN_IGNORED != 0,
		}
		for i, b := range nameBytes {
			if b == 0 {
				nameBytes = nameBytes[:i]
				break
			}
		}
		ev.name = string(nameBytes)
		evs = append(evs, ev)
	}
	return evs, nil
}

// tickWatcher returns a watcher in ticker mode.
func tickWatcher() *watcher { return &watcher{fd: -1} }
