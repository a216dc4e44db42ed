package logfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// RescanInterval is how often the Rotator checks every registered file even
// without inotify events, as a safety net against lost events.
const RescanInterval = 30 * time.Second

// batchInterval is the least time between two batches of inotify events:
// a chatty process costs the Rotator at most a few checks per second, and
// events meanwhile queue up (and coalesce) in the kernel. Files may grow
// past MaxBytes by what is written in that time.
const batchInterval = 200 * time.Millisecond

// maxTailRounds bounds the copy rounds of truncate-mode rotation.
const maxTailRounds = 8

// Mode names how a rotation removed the head of the active file (see the
// package doc): [ModeCollapse] loses nothing, [ModeTruncate] may lose what
// is written during its last two system calls.
type Mode string

// The rotation modes. The empty Mode means no rotation was done.
const (
	ModeCollapse Mode = "collapse"
	ModeTruncate Mode = "truncate"
)

// RotatorStats counts the rotations a [Rotator] has done, by mode.
type RotatorStats struct {
	Collapse uint64 // rotations in collapse mode
	Truncate uint64 // rotations in truncate mode (including collapse fallbacks)
	Failed   uint64 // rotations that failed (logged)
}

// Rotator rotates registered log files by size. One Rotator serves all
// files of an agent with a single goroutine ([Rotator.Run]). Add and Remove
// may be called at any time, from any goroutine.
type Rotator struct {
	logger hclog.Logger

	// forceTruncate disables collapse mode (tests and benchmarks).
	forceTruncate bool
	// forceTicker makes Run work without inotify (tests).
	forceTicker bool

	// rotMu serialises rotations: Run's and RotateNow's.
	rotMu sync.Mutex

	// mu guards everything below.
	mu      sync.Mutex
	stats   RotatorStats
	files   map[string]*entry // by cleaned path
	dirs    map[string]*dirWatch
	wds     map[int]string // watch descriptor -> dir
	w       *watcher       // non-nil while Run is active
	running bool
}

type entry struct {
	path string
	dir  string
	name string
	opts Options
}

type dirWatch struct {
	refs int
	wd   int // -1 when not watched
}

// NewRotator returns a Rotator logging to logger (nil means no logging).
func NewRotator(logger hclog.Logger) *Rotator {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Rotator{
		logger: logger.Named("logrotate"),
		files:  make(map[string]*entry),
		dirs:   make(map[string]*dirWatch),
		wds:    make(map[int]string),
	}
}

// Add registers path for rotation with o (zero or negative fields take their
// defaults; callers validate first with [Options.Validate]). Adding a path
// again replaces its options. A missing parent directory is created (0750)
// so that it can be watched.
func (r *Rotator) Add(path string, o Options) {
	path = filepath.Clean(path)
	e := &entry{path: path, dir: filepath.Dir(path), name: filepath.Base(path), opts: o.WithDefaults()}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.files[path]; ok {
		old.opts = e.opts
		return
	}
	r.files[path] = e
	d, ok := r.dirs[e.dir]
	if !ok {
		d = &dirWatch{wd: -1}
		r.dirs[e.dir] = d
	}
	d.refs++
	if r.w != nil && d.wd < 0 {
		r.watchLocked(e.dir, d)
	}
}

// Remove unregisters path. Its files are left in place.
func (r *Rotator) Remove(path string) {
	path = filepath.Clean(path)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.files[path]
	if !ok {
		return
	}
	delete(r.files, path)
	d := r.dirs[e.dir]
	d.refs--
	if d.refs > 0 {
		return
	}
	delete(r.dirs, e.dir)
	if d.wd >= 0 {
		delete(r.wds, d.wd)
		if r.w != nil {
			r.w.remove(d.wd)
		}
	}
}

func (r *Rotator) watchLocked(dir string, d *dirWatch) {
	wd, err := r.w.add(dir, maskRotator)
	if errors.Is(err, fs.ErrNotExist) {
		// Registered before OpenAppend created it: create it the same way.
		if mkErr := os.MkdirAll(dir, 0o750); mkErr == nil {
			wd, err = r.w.add(dir, maskRotator)
		}
	}
	if err != nil {
		// The periodic rescan still covers this directory.
		r.logger.Warn("cannot watch log dir", "dir", dir, "error", err)
		return
	}
	d.wd = wd
	r.wds[wd] = dir
}

// Run rotates files until ctx is done, then returns nil. It is the only
// goroutine doing rotation work and returns after it stops; it must not be
// called twice concurrently (ErrRunning).
func (r *Rotator) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return ErrRunning
	}
	r.running = true
	r.mu.Unlock()

	w, err := newWatcher()
	if err == nil && r.forceTicker {
		w.close()
		w, err = tickWatcher(), errors.New("inotify disabled")
	}
	if err != nil {
		r.logger.Warn("no inotify; checking log sizes on a ticker", "interval", fallbackTick, "error", err)
	}
	defer w.close()
	stop := w.interruptOn(ctx)
	defer stop()

	r.mu.Lock()
	r.w = w
	for dir, d := range r.dirs {
		r.watchLocked(dir, d)
	}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running = false
		r.w = nil
		clear(r.wds)
		for _, d := range r.dirs {
			d.wd = -1
		}
		r.mu.Unlock()
	}()

	r.scanAll()
	for {
		evs, err := w.read(ctx, RescanInterval)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if evs == nil {
			r.scanAll()
			continue
		}
		r.handle(evs)
		t := time.NewTimer(batchInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// handle checks the files named by evs (each at most once per batch).
func (r *Rotator) handle(evs []event) {
	var todo []entry
	seen := make(map[string]bool)
	r.mu.Lock()
	for _, ev := range evs {
		if ev.overflow {
			r.mu.Unlock()
			r.scanAll()
			return
		}
		dir, ok := r.wds[ev.wd]
		if !ok {
			continue
		}
		if ev.ignored {
			// The directory went away; a later Add or rescan re-watches it.
			delete(r.wds, ev.wd)
			if d := r.dirs[dir]; d != nil {
				d.wd = -1
			}
			continue
		}
		p := filepath.Join(dir, ev.name)
		if e, ok := r.files[p]; ok && !seen[p] {
			seen[p] = true
			todo = append(todo, *e)
		}
	}
	r.mu.Unlock()
	for _, e := range todo {
		r.check(e)
	}
}

// scanAll checks every registered file and re-watches unwatched dirs.
func (r *Rotator) scanAll() {
	r.mu.Lock()
	todo := make([]entry, 0, len(r.files))
	for _, e := range r.files {
		todo = append(todo, *e)
	}
	if r.w != nil {
		for dir, d := range r.dirs {
			if d.wd < 0 {
				if _, err := os.Stat(dir); err == nil {
					r.watchLocked(dir, d)
				}
			}
		}
	}
	r.mu.Unlock()
	for _, e := range todo {
		r.check(e)
	}
}

// check rotates e if it is over its limit. Errors are logged: one bad file
// must not stop rotation of the others.
func (r *Rotator) check(e entry) {
	st, err := os.Stat(e.path)
	if err != nil || st.Size() <= e.opts.MaxBytes {
		return
	}
	r.rotateCounted(e.path, e.opts)
}

// RotateNow rotates the registered file path now if it is larger than its
// MaxBytes, without waiting for Run's next batch of events, and reports the
// mode used ("" when the file is within its limit or missing). It works
// whether or not Run is active; rotations never overlap. A path that was not
// added is an error ([ErrNotRegistered]).
func (r *Rotator) RotateNow(path string) (Mode, error) {
	path = filepath.Clean(path)
	r.mu.Lock()
	e, ok := r.files[path]
	var o Options
	if ok {
		o = e.opts
	}
	r.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("%w: %s", ErrNotRegistered, path)
	}
	mode, err := r.rotateCounted(path, o)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return mode, err
}

// Stats returns how many rotations r has done so far, by mode.
func (r *Rotator) Stats() RotatorStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// rotateCounted rotates path (one rotation at a time), counts the result in
// Stats and logs it.
func (r *Rotator) rotateCounted(path string, o Options) (Mode, error) {
	r.rotMu.Lock()
	mode, err := r.rotate(path, o)
	r.rotMu.Unlock()
	r.mu.Lock()
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		r.stats.Failed++
	case mode == ModeCollapse:
		r.stats.Collapse++
	case mode == ModeTruncate:
		r.stats.Truncate++
	}
	r.mu.Unlock()
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		r.logger.Warn("log rotation failed", "path", path, "error", err)
	case mode != "":
		r.logger.Debug("log rotated", "path", path, "mode", mode)
	}
	return mode, err
}

// rotate rotates path now if it is larger than o.MaxBytes and reports the
// mode used ("" when nothing was done). Callers serialise calls (rotMu).
func (r *Rotator) rotate(path string, o Options) (Mode, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("stat: %w", err)
	}
	size := st.Size()
	if size <= o.MaxBytes {
		return "", nil
	}
	// Shift first and copy straight into path.1, which carries the logical
	// offset of its first byte, so that a follower that fell behind finds
	// the bytes it missed as soon as they leave the active file.
	for i := o.MaxFiles - 1; i >= 1; i-- {
		err := os.Rename(rotatedName(path, i), rotatedName(path, i+1))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("shift rotated files: %w", err)
		}
	}
	first := rotatedName(path, 1)
	dst, err := os.OpenFile(first, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return "", fmt.Errorf("create rotated file: %w", err)
	}
	defer dst.Close()
	base, _ := readBase(f)
	setBase(dst, base, true)
	// Followers must not trust positions while the head moves (a seqlock:
	// "base+" while moving, the new base after).
	done := false
	defer func() {
		if !done {
			setBase(f, base, true)
		}
	}()

	var copied int64
	if k := collapseLen(size, blockSize(st)); k > 0 && !r.forceTruncate {
		if err := copyRange(dst, f, 0, k); err != nil {
			return "", err
		}
		copied = k
		setBase(f, base, false)
		switch err := collapseHead(f, k); {
		case err == nil:
			done = true
			setBase(f, base+k, true)
			return ModeCollapse, dst.Close()
		case !errors.Is(err, errCollapseUnsupported):
			return "", err
		}
		// Unsupported here: go on in truncate mode after what was copied.
	}
	// Copy what was appended meanwhile, then truncate at once: only bytes
	// written between the last round and the truncate are lost.
	setBase(f, base, false)
	for range maxTailRounds {
		st, err := f.Stat()
		if err != nil {
			return "", fmt.Errorf("stat: %w", err)
		}
		if st.Size() <= copied {
			break
		}
		if err := copyRange(dst, f, copied, st.Size()-copied); err != nil {
			return "", err
		}
		copied = st.Size()
	}
	if err := f.Truncate(0); err != nil {
		return "", fmt.Errorf("truncate: %w", err)
	}
	done = true
	setBase(f, base+copied, true)
	return ModeTruncate, dst.Close()
}

// collapseLen is the block-aligned head length to collapse from a file of
// the given size: the largest multiple of bs strictly below size.
func collapseLen(size, bs int64) int64 {
	if bs <= 0 {
		return 0
	}
	k := (size / bs) * bs
	if k >= size {
		k -= bs
	}
	return k
}

// copyRange copies n bytes of src starting at off to the end of dst
// (copy_file_range where the kernel offers it).
func copyRange(dst, src *os.File, off, n int64) error {
	if _, err := src.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("seek: %w", err)
	}
	got, err := dst.ReadFrom(io.LimitReader(src, n))
	if err != nil {
		return fmt.Errorf("copy to rotated file: %w", err)
	}
	if got != n {
		return fmt.Errorf("copy to rotated file: short copy %d of %d bytes: %w", got, n, io.ErrUnexpectedEOF)
	}
	return nil
}
