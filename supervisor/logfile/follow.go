package logfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// followRescan bounds how long Follow waits without any event before it
// checks the file anyway (a safety net, not the normal path).
const followRescan = 5 * time.Second

// Follow streams the log at path to w with default options. See
// [Options.Follow].
func Follow(ctx context.Context, path string, fromEnd bool, w io.Writer) error {
	return Options{}.Follow(ctx, path, fromEnd, w)
}

// Follow writes the content of the log at path to w — from its current end
// when fromEnd is set, else from its beginning — and then everything
// appended to it, until ctx is done; it then returns nil. It survives
// rotation (collapse: keeps its exact position; truncation: restarts at the
// new beginning) and rename-and-recreate (finishes the old file, then
// follows the new one from its start). Lines longer than MaxLineBytes are
// cut and end with TruncatedMarker. Follow waits on inotify, not on a timer.
// It returns an error if path cannot be opened or w fails.
func (o Options) Follow(ctx context.Context, path string, fromEnd bool, w io.Writer) error {
	o = o.WithDefaults()
	wt, err := newWatcher()
	if err != nil {
		return err
	}
	defer wt.close()
	stop := wt.interruptOn(ctx)
	defer stop()
	// Watch before the first read so no append is missed.
	if _, err := wt.add(filepath.Dir(path), maskFollow); err != nil {
		return fmt.Errorf("follow: %w", err)
	}

	fl := &follower{path: path, out: &lineCapper{w: w, max: o.MaxLineBytes}, buf: make([]byte, 32<<10)}
	if err := fl.open(fromEnd); err != nil {
		return err
	}
	defer func() { fl.f.Close() }()

	for {
		if err := fl.drain(); err != nil {
			return err
		}
		if err := fl.checkReplaced(); err != nil {
			return err
		}
		// Any event in the directory (or the rescan timeout) is a reason to
		// look again; reads are cheap when nothing changed.
		if _, err := wt.read(ctx, followRescan); err != nil || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

type follower struct {
	path    string
	f       *os.File
	logical int64 // bytes of the file's logical stream consumed so far
	out     *lineCapper
	buf     []byte
}

func (fl *follower) open(fromEnd bool) error {
	f, err := os.Open(fl.path)
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	base := readBase(f)
	fl.f, fl.logical = f, base
	if fromEnd {
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("follow: %w", err)
		}
		fl.logical = base + st.Size()
	}
	return nil
}

// drain copies everything from the current position to the end of file.
func (fl *follower) drain() error {
	st, err := fl.f.Stat()
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	base := readBase(fl.f)
	phys := fl.logical - base
	switch {
	case phys < 0:
		// Rotated away before we read it: continue at the new head.
		phys, fl.logical = 0, base
	case phys > st.Size():
		// Truncated (without a recorded base): start again at the top.
		phys, fl.logical = 0, base
	}
	for {
		n, err := fl.f.ReadAt(fl.buf, phys)
		if n > 0 {
			if werr := fl.out.write(fl.buf[:n]); werr != nil {
				return fmt.Errorf("follow: write: %w", werr)
			}
			phys += int64(n)
			fl.logical += int64(n)
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("follow: read: %w", err)
		}
	}
}

// checkReplaced switches to a new file at path if the one we hold was
// renamed away or deleted and another was created in its place.
func (fl *follower) checkReplaced() error {
	cur, err := os.Stat(fl.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // wait for it to come back
	}
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	held, err := fl.f.Stat()
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	if os.SameFile(cur, held) {
		return nil
	}
	if err := fl.drain(); err != nil { // what the old file still got
		return err
	}
	old := fl.f
	if err := fl.open(false); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	old.Close()
	return fl.drain()
}

// lineCapper forwards bytes and cuts lines longer than max.
type lineCapper struct {
	w        io.Writer
	max      int
	cur      int  // bytes of the current line written
	dropping bool // current line was cut; skip to its newline
}

func (c *lineCapper) write(p []byte) error {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		seg := p
		if i >= 0 {
			seg = p[:i]
		}
		rest := p[len(seg):] // starts with '\n' or is empty
		if !c.dropping {
			room := c.max - c.cur
			if len(seg) > room {
				if _, err := c.w.Write(append(trimPartialRune(seg[:room:room]), TruncatedMarker...)); err != nil {
					return err
				}
				c.dropping = true
			} else if len(seg) > 0 {
				if _, err := c.w.Write(seg); err != nil {
					return err
				}
				c.cur += len(seg)
			}
		}
		if len(rest) == 0 {
			return nil
		}
		if _, err := c.w.Write([]byte{'\n'}); err != nil {
			return err
		}
		c.cur, c.dropping = 0, false
		p = rest[1:]
	}
	return nil
}
