package logfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStreamRotationAtEveryPoint: a collapse rotation at any point of a
// stream (while the rotated files are copied, while the active file is)
// loses and repeats nothing.
func TestStreamRotationAtEveryPoint(t *testing.T) {
	t.Parallel()
	for _, at := range []int{1, 2, 5, 10, 20, 40, 80} {
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "app.log")
			f, err := OpenAppend(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			o := Options{MaxBytes: 256 << 10, MaxFiles: 50}.WithDefaults()
			r := NewRotator(nil)
			var want []string
			pad := strings.Repeat("x", 90)
			for i := range 6000 {
				l := fmt.Sprintf("line %08d %s", i, pad)
				want = append(want, l)
				appendTo(t, f, l+"\n")
				if i == 3000 {
					if _, err := r.rotate(p, o); err != nil {
						t.Fatal(err)
					}
				}
			}
			writes := 0
			w := &hookWriter{hook: func() {
				if writes++; writes == at {
					if mode, err := r.rotate(p, o); err != nil || mode != "collapse" {
						t.Errorf("rotate = %q, %v", mode, err)
					}
				}
			}}
			if err := o.Stream(context.Background(), p, len(want), false, w); err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(w.b.String(), "\n"), "\n")
			if len(got) != len(want) {
				t.Fatalf("rotation at write %d: %d lines, want %d", at, len(got), len(want))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("rotation at write %d: line %d = %.20q, want %.20q", at, i, got[i], want[i])
				}
			}
		})
	}
}

// TestStreamConcurrentRotation: streams that run while the rotator rotates
// (its unstable window included) each get every line once.
func TestStreamConcurrentRotation(t *testing.T) {
	t.Parallel()
	for iter := range 8 {
		p := filepath.Join(t.TempDir(), "app.log")
		f, err := OpenAppend(p)
		if err != nil {
			t.Fatal(err)
		}
		o := Options{MaxBytes: 256 << 10, MaxFiles: 50}.WithDefaults()
		r := NewRotator(nil)
		var want strings.Builder
		pad := strings.Repeat("x", 90)
		for i := range 8000 {
			l := fmt.Sprintf("line %08d %s\n", i, pad)
			want.WriteString(l)
			appendTo(t, f, l)
			if i%2500 == 2499 {
				if _, err := r.rotate(p, o); err != nil {
					t.Fatal(err)
				}
			}
		}
		f.Close()
		const streams = 6
		outs := make([]strings.Builder, streams)
		errs := make(chan error, streams+1)
		start := make(chan struct{})
		for i := range streams {
			go func() {
				<-start
				errs <- o.Stream(context.Background(), p, 8000, false, &outs[i])
			}()
		}
		go func() {
			<-start
			_, err := r.rotate(p, o)
			errs <- err
		}()
		close(start)
		for range streams + 1 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		for i := range outs {
			if got := outs[i].String(); got != want.String() {
				g := strings.Split(got, "\n")
				t.Fatalf("iteration %d stream %d: %d lines, want 8000; first %.20q last %.20q", iter, i, len(g)-1, g[0], g[max(0, len(g)-2)])
			}
		}
	}
}

// TestFindStartSeesRotationInProgress: the two windows of a rotation in
// which the rotated files do not line up (path.1 shifted away and not yet
// recreated; path.1 being filled with the head the active file still
// holds) are told apart from a finished rotation, so that Stream scans
// again instead of streaming lines twice or not at all.
func TestFindStartSeesRotationInProgress(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "app.log")
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o := Options{MaxBytes: 8 << 10, MaxFiles: 10}.WithDefaults()
	r := NewRotator(nil)
	for i := range 3000 {
		appendTo(t, f, fmt.Sprintf("line %08d\n", i))
		if i%1000 == 999 {
			if _, err := r.rotate(p, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	scan := func() error {
		a, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		srcs := []tailSource{{f: a}}
		defer func() {
			for _, s := range srcs {
				s.f.Close()
			}
		}()
		base, size, err := stableSize(a)
		if err != nil {
			t.Fatal(err)
		}
		srcs[0].size = size
		_, _, err = o.findStart(p, &srcs, 3000, base, true)
		return err
	}
	if err := scan(); err != nil {
		t.Fatalf("finished rotations: %v", err)
	}
	// Window 1: path.1 shifted to path.2, no path.1 yet.
	one, two := rotatedName(p, 1), rotatedName(p, 2)
	if err := os.Rename(two, rotatedName(p, 3)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(one, two); err != nil {
		t.Fatal(err)
	}
	if err := scan(); !errors.Is(err, errRotating) {
		t.Fatalf("path.1 shifted away: %v, want errRotating", err)
	}
	// Window 2: path.1 recreated with part of the active file's head.
	a, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := readBase(a)
	a.Close()
	nf, err := os.Create(one)
	if err != nil {
		t.Fatal(err)
	}
	setBase(nf, base, true)
	nf.WriteString("line 00002")
	nf.Close()
	if err := scan(); !errors.Is(err, errRotating) {
		t.Fatalf("path.1 being filled: %v, want errRotating", err)
	}
}

// TestStreamRotationBeyondItsEnd: appends and a rotation that moves the
// head past the end a stream without follow stops at (while it is still
// reading) end it cleanly, with exactly the lines there were when it began.
func TestStreamRotationBeyondItsEnd(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "app.log")
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want strings.Builder
	for i := range 3000 {
		l := fmt.Sprintf("line %08d\n", i)
		want.WriteString(l)
		appendTo(t, f, l)
	}
	o := Options{MaxBytes: 8 << 10, MaxFiles: 10}.WithDefaults()
	r := NewRotator(nil)
	done := false
	w := &hookWriter{hook: func() {
		if !done {
			done = true
			for i := range 20000 {
				appendTo(t, f, fmt.Sprintf("more %08d\n", i))
			}
			if mode, err := r.rotate(p, o); err != nil || mode != "collapse" {
				t.Errorf("rotate = %q, %v", mode, err)
			}
		}
	}}
	if err := o.Stream(context.Background(), p, 3000, false, w); err != nil {
		t.Fatal(err)
	}
	if got := w.b.String(); got != want.String() {
		t.Fatalf("streamed %d bytes, want %d", len(got), want.Len())
	}
}
