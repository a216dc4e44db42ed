package logfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
)

// Source is one log file of a merged stream and the label its lines get.
type Source struct {
	Label string // written before each line, followed by " | "
	Path  string
}

// StreamMerged writes the last n lines of each source's log to w, each
// line prefixed with its source's label and " | ": first all of the first
// source's lines, then the second's, and so on (the files carry no
// timestamps, so lines of different files written before the call cannot
// be put back in the order they were written). With follow it then writes
// the lines appended to any of the files, in the order they are read: each
// file is followed on its own (inotify wakes its reader within
// milliseconds of a write), and whole lines of all sources go to w through
// one lock, so lines of one source keep their order and lines of
// different sources come out in the order they reached the files, give or
// take the few milliseconds between two wake-ups. A line is written once
// it ends (a followed line without a newline yet waits for it); without
// follow a last unterminated line is ended, as [Options.Stream] does.
//
// A source whose file does not exist yet has no history; with follow its
// file is awaited and streamed from its beginning. Without follow,
// StreamMerged returns fs.ErrNotExist (wrapped) only when no source's file
// exists. It returns when every source is done (without follow) or when
// ctx is done (with follow: nil), or at the first error of any source
// (the others are cancelled). Memory is each source's fixed buffers plus
// at most one line (MaxLineBytes) per source.
func (o Options) StreamMerged(ctx context.Context, srcs []Source, n int, follow bool, w io.Writer) error {
	if n < 0 {
		return fmt.Errorf("%w: %d", ErrNegativeCount, n)
	}
	o = o.WithDefaults()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := &merger{w: w, done: make([]chan struct{}, len(srcs))}
	for i := range m.done {
		m.done[i] = make(chan struct{})
	}
	errs := make([]error, len(srcs))
	var wg sync.WaitGroup
	for i, src := range srcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lw := &labelWriter{m: m, i: i, ctx: ctx, prefix: []byte(src.Label + " | "), max: o.MaxLineBytes + len(TruncatedMarker)}
			var once sync.Once
			histDone := func() { once.Do(func() { lw.history = true; close(m.done[i]) }) }
			defer histDone() // a source that failed holds nobody back
			err := o.stream(ctx, src.Path, n, follow, lw, histDone)
			if errors.Is(err, fs.ErrNotExist) && follow {
				histDone()
				err = o.Follow(ctx, src.Path, false, lw)
			}
			if err == nil && !follow {
				err = lw.flush()
			}
			if err != nil && ctx.Err() == nil {
				errs[i] = err
				if !errors.Is(err, fs.ErrNotExist) {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	missing := 0
	for _, err := range errs {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing++
		case err != nil:
			return err
		}
	}
	if missing == len(srcs) && len(srcs) > 0 {
		return errs[0]
	}
	return nil
}

// merger serialises the whole lines of a merged stream onto w. done[i] is
// closed once source i's history is written.
type merger struct {
	mu   sync.Mutex // guards writes to w
	w    io.Writer
	done []chan struct{}
}

// labelWriter collects one source's bytes into lines and writes each whole
// line, labelled, through its merger: during its history only after the
// histories of the sources before it, afterwards only after every
// source's history.
type labelWriter struct {
	m       *merger
	i       int
	ctx     context.Context
	prefix  []byte
	max     int    // longest line to hold (a cut line plus its marker)
	line    []byte // the current unterminated line
	out     []byte // scratch: prefix + line
	history bool   // this source's history is written
}

func (l *labelWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		j := bytes.IndexByte(p, '\n')
		if j < 0 {
			// Hold the start of a line; never more than a capped line.
			room := max(l.max-len(l.line), 0)
			l.line = append(l.line, p[:min(room, len(p))]...)
			return n, nil
		}
		l.line = append(l.line, p[:j+1]...)
		p = p[j+1:]
		if err := l.emit(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// flush ends and writes a last line that has no newline.
func (l *labelWriter) flush() error {
	if len(l.line) == 0 {
		return nil
	}
	l.line = append(l.line, '\n')
	return l.emit()
}

func (l *labelWriter) emit() error {
	wait := l.m.done[:l.i]
	if l.history {
		wait = l.m.done
	}
	for _, ch := range wait {
		select {
		case <-ch:
		case <-l.ctx.Done():
			return l.ctx.Err()
		}
	}
	l.out = append(append(l.out[:0], l.prefix...), l.line...)
	l.line = l.line[:0]
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	_, err := l.m.w.Write(l.out)
	return err
}
