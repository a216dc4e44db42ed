//go:build !linux

package logfile

import (
	"context"
	"errors"
	"time"
)

const (
	maskRotator = 0
	maskFollow  = 0
)

type event struct {
	wd       int
	name     string
	overflow bool
	ignored  bool
}

// fallbackTick is how often the portable watcher reports a rescan.
const fallbackTick = time.Second

// watcher without inotify: every read waits for a tick (or the timeout) and
// reports an overflow, which makes callers rescan everything.
type watcher struct{}

func newWatcher() (*watcher, error) {
	return &watcher{}, errors.New("logfile: no inotify on this system")
}
func (w *watcher) add(dir string, mask uint32) (int, error) { return 0, nil }
func (w *watcher) remove(wd int)                            {}
func (w *watcher) close() error                             { return nil }
func (w *watcher) interruptOn(ctx context.Context) func()   { return func() {} }

func (w *watcher) read(ctx context.Context, timeout time.Duration) ([]event, error) {
	t := time.NewTimer(min(timeout, fallbackTick))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return []event{{overflow: true}}, nil
	}
}

// tickWatcher returns a watcher (always in ticker mode here).
func tickWatcher() *watcher { return &watcher{} }
