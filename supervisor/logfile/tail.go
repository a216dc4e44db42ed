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
	"strings"
	"time"
	"unicode/utf8"
)

// tailBlock is the size of the blocks Stream reads backwards.
const tailBlock = 64 << 10

// ErrNegativeCount is returned (wrapped) by Tail and Stream for n < 0.
var ErrNegativeCount = errors.New("logfile: negative line count")

// Tail returns the last n lines of the log at path with default options.
// See [Options.Tail].
func Tail(path string, n int) ([]string, error) {
	return Options{}.Tail(path, n)
}

// Tail returns the last n lines of the log at path, oldest first, without
// their newlines: what [Options.Stream] writes, collected. It holds the lines
// in memory; to send them somewhere, use Stream.
func (o Options) Tail(path string, n int) ([]string, error) {
	var b strings.Builder
	if err := o.Stream(context.Background(), path, n, false, &b); err != nil {
		return nil, err
	}
	if b.Len() == 0 {
		return nil, nil
	}
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n"), nil
}

// Stream writes the last n lines of the log at path to w, oldest first,
// each ending with a newline; with follow, it then writes everything
// appended after them (as [Options.Follow] does, with no gap and no repeat
// between the two) until ctx is done. When the active file holds fewer
// than n lines, older lines come from the rotated files path.1 …
// path.MaxFiles; a line cut in two by a rotation comes out whole. Files are
// read backwards in fixed blocks to find where the n lines start, then
// copied forward in fixed chunks: memory is the same for any n and any
// file size, so a huge n simply streams every line there is. Lines longer
// than MaxLineBytes are cut and end with TruncatedMarker.
//
// Without follow, Stream stops at the end the file had when Stream began,
// ends a last line that has no newline yet with one, and returns nil, or
// ctx's error if ctx ended first. With follow it returns nil when ctx is
// done. Other errors: the active file missing (wrapping fs.ErrNotExist;
// [Options.Follow] waits for it instead), n < 0 (ErrNegativeCount), a
// failed read or a failed write to w.
func (o Options) Stream(ctx context.Context, path string, n int, follow bool, w io.Writer) error {
	return o.stream(ctx, path, n, follow, w, nil)
}

// stream is Stream; with follow, historyDone (if not nil) is called once
// the last n lines are written, before anything appended after them.
func (o Options) stream(ctx context.Context, path string, n int, follow bool, w io.Writer, historyDone func()) error {
	if n < 0 {
		return fmt.Errorf("%w: %d", ErrNegativeCount, n)
	}
	o = o.WithDefaults()
	var wt *watcher
	if follow {
		// Watch before reading so no append is missed.
		wt, _ = newWatcher()
		defer wt.close()
		if _, err := wt.add(filepath.Dir(path), maskFollow); err != nil {
			return fmt.Errorf("tail: %w", err)
		}
	}
	f0, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	st, err := o.locate(ctx, path, f0, n)
	if err != nil {
		f0.Close()
		return err
	}
	defer st.closeRotated()

	lw := &lastByteWriter{w: w}
	lc := &lineCapper{w: lw, max: o.MaxLineBytes}
	buf := make([]byte, 32<<10)
	for i := st.file; i >= 1; i-- {
		off := int64(0)
		if i == st.file {
			off = st.off
		}
		if err := copyOut(ctx, st.srcs[i].f, off, st.srcs[i].size, buf, lc); err != nil {
			f0.Close()
			return err
		}
	}
	// The active file is read through a follower, at logical offsets: a
	// rotation while a slow client reads moves its head into path.1, and
	// the follower picks those bytes up from there.
	fl := &follower{path: path, maxFiles: o.MaxFiles, f: f0, logical: st.base0, out: lc, buf: buf, limit: -1}
	if st.file == 0 {
		fl.logical += st.off
	}
	if follow {
		if historyDone != nil {
			fl.limit = st.base0 + st.size0
			if err := fl.drain(); err != nil {
				f0.Close()
				return err
			}
			historyDone()
			fl.limit = -1
		}
		return fl.run(ctx, wt, false) // closes fl.f
	}
	defer f0.Close()
	fl.limit = st.base0 + st.size0
	if err := fl.drain(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if lw.n > 0 && lw.last != '\n' {
		if _, err := lw.Write(newline); err != nil {
			return fmt.Errorf("tail: write: %w", err)
		}
	}
	return nil
}

// tailStart is where Stream's last n lines begin: in srcs[file] (0 is the
// active file, i is path.i) at offset off.
type tailStart struct {
	srcs         []tailSource // srcs[0] is the active file, its size size0
	base0, size0 int64        // the active file's rotation base and size
	file         int
	off          int64
}

// closeRotated closes the rotated files st opened (not the active one).
func (st *tailStart) closeRotated() {
	for _, s := range st.srcs[1:] {
		s.f.Close()
	}
	st.srcs = st.srcs[:1]
}

// locate finds where the last n lines of the log at path start; f0 is
// its active file, open (locate does not close it). A rotation caught
// half-way (files being shifted, path.1 being filled) shows as a broken
// chain of rotated files: locate scans again once it is over (bounded;
// then it goes on with what was found), or returns ctx's error if ctx
// ends first.
func (o Options) locate(ctx context.Context, path string, f0 *os.File, n int) (*tailStart, error) {
	st := &tailStart{srcs: []tailSource{{f: f0}}}
	retry := time.Millisecond
	for attempt := 0; ; attempt++ {
		var err error
		if st.base0, st.size0, err = stableSize(f0); err != nil {
			return nil, err
		}
		st.srcs[0].size = st.size0
		st.file, st.off = 0, st.size0
		if n == 0 {
			return st, nil
		}
		st.file, st.off, err = o.findStart(path, &st.srcs, n, st.base0, attempt < 12)
		if !errors.Is(err, errRotating) {
			if err != nil {
				st.closeRotated()
				return nil, err
			}
			return st, nil
		}
		st.closeRotated()
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		retry = min(2*retry, 200*time.Millisecond)
	}
}

// tailSource is one file Stream reads, with its size when it was opened.
type tailSource struct {
	f    *os.File
	size int64
}

// stableSize returns f's rotation base and size, read while no rotation
// was moving its head (a few tries; then the last values read).
func stableSize(f *os.File) (base, size int64, err error) {
	for range 5 {
		b, ok := readBase(f)
		st, err := f.Stat()
		if err != nil {
			return 0, 0, fmt.Errorf("tail: %w", err)
		}
		base, size = b, st.Size()
		if b2, ok2 := readBase(f); b2 == b && ok && ok2 {
			break
		}
	}
	return base, size, nil
}

// errRotating reports a chain of rotated files caught in the middle of a
// rotation.
var errRotating = errors.New("logfile: rotation in progress")

// findStart scans the log's logical stream (rotated files oldest first,
// then the active file) backwards from its end, in blocks, for the newline
// before the last n lines (n > 0), opening rotated files into srcs as it
// reaches them. It returns the file (0 = active, i = path.i) and offset
// where those lines start, or the start of the oldest file when there are
// fewer lines. base0 is the active file's rotation base. With check, a
// rotated file whose recorded logical range does not end where the next
// newer one begins (a rotation is shifting or filling them) is
// errRotating; without rotation bases (no xattr support) nothing is
// checked.
func (o Options) findStart(path string, srcs *[]tailSource, n int, base0 int64, check bool) (int, int64, error) {
	buf := make([]byte, tailBlock)
	need := n
	skipLast := true // the last byte of all, if a newline, ends the last line
	wantEnd := base0 // logical end the next older file must have
	for i := 0; ; i++ {
		if i > 0 {
			if i > o.MaxFiles {
				return i - 1, 0, nil
			}
			f, err := os.Open(rotatedName(path, i))
			if errors.Is(err, fs.ErrNotExist) {
				if _, err := os.Stat(rotatedName(path, i+1)); check && err == nil {
					return 0, 0, errRotating // a gap: files are being shifted
				}
				return i - 1, 0, nil
			}
			if err != nil {
				return 0, 0, fmt.Errorf("tail: %w", err)
			}
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return 0, 0, fmt.Errorf("tail: %w", err)
			}
			*srcs = append(*srcs, tailSource{f: f, size: st.Size()})
			start, stable := readBase(f)
			if check && (wantEnd > 0 || start > 0) && (!stable || start+st.Size() != wantEnd) {
				return 0, 0, errRotating
			}
			wantEnd = start
		}
		src := (*srcs)[i]
		for pos := src.size; pos > 0; {
			blk := min(int64(tailBlock), pos)
			b := buf[:blk]
			if _, err := src.f.ReadAt(b, pos-blk); err != nil && !errors.Is(err, io.EOF) {
				return 0, 0, fmt.Errorf("tail: %w", err)
			}
			if skipLast {
				skipLast = false
				if b[len(b)-1] == '\n' {
					b = b[:len(b)-1]
				}
			}
			for {
				k := bytes.LastIndexByte(b, '\n')
				if k < 0 {
					break
				}
				if need--; need == 0 {
					return i, pos - blk + int64(k) + 1, nil
				}
				b = b[:k]
			}
			pos -= blk
		}
	}
}

// copyOut writes bytes [off, end) of f to lc, in chunks of buf.
func copyOut(ctx context.Context, f *os.File, off, end int64, buf []byte, lc *lineCapper) error {
	for off < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := f.ReadAt(buf[:min(int64(len(buf)), end-off)], off)
		if m > 0 {
			if werr := lc.write(buf[:m]); werr != nil {
				return fmt.Errorf("tail: write: %w", werr)
			}
			off += int64(m)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("tail: %w", err)
		}
	}
	return nil
}

// lastByteWriter remembers how many bytes went through it, and the last.
type lastByteWriter struct {
	w    io.Writer
	n    int64
	last byte
}

func (l *lastByteWriter) Write(p []byte) (int, error) {
	m, err := l.w.Write(p)
	if m > 0 {
		l.n += int64(m)
		l.last = p[m-1]
	}
	return m, err
}

// trimPartialRune drops an incomplete UTF-8 sequence at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			return b
		}
	}
	return b
}
