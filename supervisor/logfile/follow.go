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

// staleRotation is how long an unstable rotation base is honoured before
// Follow assumes the rotator crashed mid-rotation.
const staleRotation = 2 * followRescan

// Follow streams the log at path to w with default options. See
// [Options.Follow].
func Follow(ctx context.Context, path string, fromEnd bool, w io.Writer) error {
	return Options{}.Follow(ctx, path, fromEnd, w)
}

// Follow writes the content of the log at path to w — from its current end
// when fromEnd is set, else from its beginning — and then everything
// appended to it, until ctx is done; it then returns nil. If path (or its
// directory) does not exist yet, Follow waits for it and then streams it
// from its beginning. It survives
// rotation (collapse: keeps its exact position; truncation: restarts at the
// new beginning) and rename-and-recreate (finishes the old file, then
// follows the new one from its start). Lines longer than MaxLineBytes are
// cut and end with TruncatedMarker. Follow waits on inotify, not on a timer.
// It returns an error if path cannot be opened or watched (other than not
// existing yet) or w fails.
func (o Options) Follow(ctx context.Context, path string, fromEnd bool, w io.Writer) error {
	o = o.WithDefaults()
	// Without inotify, wt falls back to a ticker.
	wt, _ := newWatcher()
	defer wt.close()
	fl := &follower{path: path, maxFiles: o.MaxFiles, out: &lineCapper{w: w, max: o.MaxLineBytes}, buf: make([]byte, 32<<10), limit: -1}
	return fl.run(ctx, wt, fromEnd)
}

// run follows fl.path until ctx is done, starting with the file fl holds
// (if any). It closes the file fl holds when it returns. wt must not have
// been given the directory yet, or must be watching it already.
func (fl *follower) run(ctx context.Context, wt *watcher, fromEnd bool) error {
	stop := wt.interruptOn(ctx)
	defer stop()
	defer func() {
		if fl.f != nil {
			fl.f.Close()
		}
	}()
	dirWatched := false
	for {
		// Watch before reading so no append is missed. A directory that
		// does not exist yet is awaited through its nearest ancestor.
		if !dirWatched {
			watched, err := watchDirOrAncestor(wt, filepath.Dir(fl.path))
			if err != nil {
				return err
			}
			dirWatched = watched
		}
		if fl.f == nil {
			err := fl.open(fromEnd)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				fromEnd = false // once it appears, all of it is new
			case err != nil:
				return err
			}
		}
		if fl.f != nil {
			if err := fl.drain(); err != nil {
				return err
			}
			if err := fl.checkReplaced(); err != nil {
				return err
			}
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

// watchDirOrAncestor watches dir for Follow, or, while dir does not exist,
// its nearest existing ancestor for creations. It reports whether dir
// itself is watched.
func watchDirOrAncestor(wt *watcher, dir string) (bool, error) {
	_, err := wt.add(dir, maskFollow)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("follow: %w", err)
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		_, err := wt.add(d, maskFollow)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, fs.ErrNotExist) || d == filepath.Dir(d) {
			return false, fmt.Errorf("follow: %w", err)
		}
	}
}

type follower struct {
	path     string
	maxFiles int
	f        *os.File
	logical  int64 // bytes of the file's logical stream consumed so far
	out      *lineCapper
	buf      []byte
	// pendingSince is when an unstable base was first seen (zero if none).
	pendingSince time.Time
	// limit, when not negative, is the logical offset drain stops at (a
	// tail without follow reads up to the end it found, no further).
	limit int64
}

func (fl *follower) open(fromEnd bool) error {
	f, err := os.Open(fl.path)
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	base, _ := readBase(f)
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
// Each chunk is read between two reads of the rotation base and kept only
// if the base stayed the same and stable, so a rotation racing with the
// read never yields misplaced bytes.
func (fl *follower) drain() error {
	for {
		if fl.limit >= 0 && fl.logical >= fl.limit {
			return nil
		}
		base, stable := readBase(fl.f)
		if !stable {
			if fl.pendingSince.IsZero() {
				fl.pendingSince = time.Now()
			}
			// A rotation is moving the head; its end (IN_ATTRIB) wakes us.
			// A mark left by a crashed rotator is ignored after a while.
			if time.Since(fl.pendingSince) < staleRotation {
				return nil
			}
		} else {
			fl.pendingSince = time.Time{}
		}
		if fl.logical < base {
			// Rotated away before we read it: take it from the rotated files.
			if err := fl.catchUp(base); err != nil {
				return err
			}
			fl.logical = base
			continue // base may lie beyond the limit
		}
		st, err := fl.f.Stat()
		if err != nil {
			return fmt.Errorf("follow: %w", err)
		}
		phys := fl.logical - base
		if phys > st.Size() {
			if b, ok := readBase(fl.f); b == base && ok == stable {
				// Truncated without a recorded base: start again at the top.
				fl.logical = base
			}
			continue
		}
		rbuf := fl.buf
		if fl.limit >= 0 {
			rbuf = rbuf[:min(int64(len(rbuf)), fl.limit-fl.logical)]
		}
		n, rerr := fl.f.ReadAt(rbuf, phys)
		if b, ok := readBase(fl.f); b != base || ok != stable {
			continue // rotated while reading: retry with the new base
		}
		if n > 0 {
			if err := fl.out.write(fl.buf[:n]); err != nil {
				return fmt.Errorf("follow: write: %w", err)
			}
			fl.logical += int64(n)
		}
		if errors.Is(rerr, io.EOF) || (rerr == nil && n == 0) || (fl.limit >= 0 && fl.logical >= fl.limit) {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("follow: read: %w", rerr)
		}
	}
}

// catchUp copies the bytes between the current position and base, which a
// rotation moved out of the active file, from the rotated files that hold
// them (each records the logical offset of its first byte). Bytes no longer
// kept anywhere are skipped.
func (fl *follower) catchUp(base int64) error {
	misses := 0
	if fl.limit >= 0 {
		base = min(base, fl.limit)
	}
	for fl.logical < base {
		n, err := fl.copyFromRotated(base)
		if err != nil {
			return err
		}
		if n > 0 {
			misses = 0
			continue
		}
		// Not found: a concurrent shift may have hidden it; look again,
		// then give up (dropped, or lost in a truncate window).
		if misses++; misses > 3 {
			return nil
		}
	}
	return nil
}

// copyFromRotated writes the rotated bytes at the current position, up to
// base, from the one rotated file holding them, and returns how many.
func (fl *follower) copyFromRotated(base int64) (int64, error) {
	// All slots are looked at: a shift in progress leaves gaps.
	for i := 1; i <= fl.maxFiles; i++ {
		f, err := os.Open(rotatedName(fl.path, i))
		if err != nil {
			continue
		}
		start, _ := readBase(f)
		st, err := f.Stat()
		if err != nil || start > fl.logical || fl.logical >= start+st.Size() {
			f.Close()
			continue
		}
		upTo := min(base, start+st.Size())
		if fl.limit >= 0 {
			upTo = min(upTo, fl.limit)
		}
		n, err := fl.copyAt(f, fl.logical-start, upTo-fl.logical)
		f.Close()
		return n, err
	}
	return 0, nil
}

// copyAt writes up to n bytes of f from off and advances the position.
func (fl *follower) copyAt(f *os.File, off, n int64) (int64, error) {
	var done int64
	for done < n {
		m, err := f.ReadAt(fl.buf[:min(int64(len(fl.buf)), n-done)], off+done)
		if m > 0 {
			if werr := fl.out.write(fl.buf[:m]); werr != nil {
				return done, fmt.Errorf("follow: write: %w", werr)
			}
			done += int64(m)
			fl.logical += int64(m)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return done, nil
			}
			return done, fmt.Errorf("follow: read: %w", err)
		}
	}
	return done, nil
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
	// Runs of lines within the cap go out in one write (a followed chunk
	// is one write, so one flush, for the HTTP client).
	pend := 0 // p[pend:i] passes through unchanged and is not written yet
	for i := 0; i < len(p); {
		j := bytes.IndexByte(p[i:], '\n')
		end := len(p)
		if j >= 0 {
			end = i + j
		}
		seg := p[i:end]
		switch room := c.max - c.cur; {
		case c.dropping:
			if err := c.out(p[pend:i]); err != nil {
				return err
			}
			pend = end
		case len(seg) > room:
			if err := c.out(p[pend:i]); err != nil {
				return err
			}
			if err := c.out(append(trimPartialRune(seg[:room:room]), TruncatedMarker...)); err != nil {
				return err
			}
			c.dropping = true
			pend = end
		default:
			c.cur += len(seg)
		}
		if j < 0 {
			break
		}
		c.cur, c.dropping = 0, false
		i = end + 1
	}
	return c.out(p[pend:])
}

// out writes b, if not empty, to the underlying writer.
func (c *lineCapper) out(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, err := c.w.Write(b)
	return err
}

// newline is written after each line; shared so that a write per line
// allocates nothing (a literal escapes through the io.Writer).
var newline = []byte{'\n'}
