//go:build linux

package cgroup

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Kill SIGKILLs every process in the group and waits (bounded) until it is
// empty; ErrBusy if it does not empty in time. v2 and unified tracking use
// cgroup.kill; v1 freezes the group first when the freezer is available, so
// nothing forks while it is being emptied. In none mode Kill does nothing.
func (g *Group) Kill() error {
	if g.m.mode == ModeNone {
		return nil
	}
	killFile := ""
	if g.unified != "" {
		killFile = filepath.Join(g.unified, "cgroup.kill")
		if _, err := os.Stat(killFile); err != nil {
			killFile = ""
		}
	}
	freezer := g.v1["freezer"]
	timeout := cmp.Or(g.m.killTimeout, killTimeout)
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		pids, err := g.PIDs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			if freezer != "" {
				_ = writeFile(filepath.Join(freezer, "freezer.state"), "THAWED")
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %q still holds %d processes after %v", ErrBusy, g.id, len(pids), timeout)
		}
		if killFile != "" {
			if err := writeFile(killFile, "1"); err != nil {
				return fmt.Errorf("kill group %q: %w", g.id, err)
			}
			// The kernel reports "populated 0" in cgroup.events, with an
			// inotify event, once the last member has exited.
			watched, err := waitUnpopulated(g.unified, deadline)
			if err != nil {
				return fmt.Errorf("kill group %q: %w", g.id, err)
			}
			if watched {
				continue
			}
		} else {
			g.signalAll(pids, freezer)
		}
		// No emptiness notification (v1, or no cgroup.events): dying
		// processes leave the group asynchronously, so look again after a
		// short, growing pause.
		t := time.NewTimer(wait)
		<-t.C
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// signalAll SIGKILLs pids, with the v1 group frozen meanwhile when a
// freezer is available: frozen tasks cannot fork, and SIGKILL is delivered
// on thaw.
func (g *Group) signalAll(pids []int, freezer string) {
	if freezer != "" {
		_ = writeFile(filepath.Join(freezer, "freezer.state"), "FROZEN")
	}
	self := os.Getpid()
	for _, p := range pids {
		if p > 1 && p != self { // never init or the agent itself
			_ = unix.Kill(p, unix.SIGKILL)
		}
	}
	if freezer != "" {
		_ = writeFile(filepath.Join(freezer, "freezer.state"), "THAWED")
	}
}

// waitUnpopulated blocks until dir/cgroup.events reads "populated 0" or
// the deadline passes (the caller re-checks either way). It reports false,
// without waiting, when the file cannot be watched.
func waitUnpopulated(dir string, deadline time.Time) (watched bool, err error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return false, fmt.Errorf("inotify init: %w", err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	events := filepath.Join(dir, "cgroup.events")
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		return false, nil
	}
	if err := f.SetReadDeadline(deadline); err != nil {
		return false, err
	}
	buf := make([]byte, 4096)
	for {
		n, err := readKey(events, "populated")
		if err != nil {
			return false, nil // not a real cgroup2 group
		}
		if n == 0 {
			return true, nil
		}
		if _, err := f.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return true, nil
			}
			return true, fmt.Errorf("inotify read: %w", err)
		}
	}
}
