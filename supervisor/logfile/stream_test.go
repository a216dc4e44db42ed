package logfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// TestStreamMemoryFlat: streaming 100 000 lines (the agent's most) costs
// the same fixed buffers as streaming 10; Tail, which collects them, grows
// with the lines. Found by issue 14 row 4 (20 log requests: 87 MB -> 1.69 GB).
func TestStreamMemoryFlat(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.log")
	writeNumbered(t, p, 0, 300_000)
	allocated := func(n int) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := (Options{}).Stream(context.Background(), p, n, false, io.Discard); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, big := allocated(10), allocated(100_000)
	// 100 000 lines are 1.4 MB of text; the buffers are 96 KiB.
	if big > 512<<10 {
		t.Fatalf("Stream of 100000 lines allocated %d bytes (10 lines: %d); want < 512 KiB", big, small)
	}
	var out countWriter
	if err := (Options{}).Stream(context.Background(), p, 100_000, false, &out); err != nil || out.n != 100_000*14 {
		t.Fatalf("streamed %d bytes, %v; want %d", out.n, err, 100_000*14)
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestStreamFollowContinuesWhereTailEnded: the history and the followed
// output meet without a gap or a repeat, and a cancelled context ends it.
func TestStreamFollowContinuesWhereTailEnded(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "out.log")
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	appendTo(t, f, "a\nb\nc\npart")
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (Options{}).Stream(ctx, p, 2, true, out) }()
	waitOutput(t, out, "c\npart")
	appendTo(t, f, "ial\nd\n")
	waitOutput(t, out, "d\n")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Stream after cancel: %v", err)
		}
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("Stream did not return after its context was cancelled")
	}
	if got, want := out.String(), "c\npartial\nd\n"; got != want {
		t.Fatalf("streamed %q, want %q", got, want)
	}
}

// TestStreamStopsOnCancelAndWriteError: a client that goes away (its
// writes fail, its context ends) ends the stream at once.
func TestStreamStopsOnCancelAndWriteError(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "big.log")
	writeNumbered(t, p, 0, 100_000)
	errGone := errors.New("client gone")
	w := &failAfter{left: 64 << 10, err: errGone}
	if err := (Options{}).Stream(context.Background(), p, 100_000, false, w); !errors.Is(err, errGone) {
		t.Fatalf("Stream to a failing writer = %v, want %v", err, errGone)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	writeNumbered(t, rotatedName(p, 1), 0, 10)
	if err := (Options{}).Stream(ctx, p, 100_005, false, io.Discard); !errors.Is(err, context.Canceled) {
		t.Fatalf("Stream with a cancelled context = %v", err)
	}
}

type failAfter struct {
	left int
	err  error
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.left {
		return 0, f.err
	}
	f.left -= len(p)
	return len(p), nil
}

// TestStreamAcrossCollapseRotation: a rotation between finding the start and
// reading (a slow client) moves bytes out of the active file; they still
// come out once, in order.
func TestStreamAcrossCollapseRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	requireCollapse(t, dir)
	p := filepath.Join(dir, "app.log")
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []string
	for i := range 3000 {
		l := fmt.Sprintf("line %08d", i)
		want = append(want, l)
		appendTo(t, f, l+"\n")
	}
	o := Options{MaxBytes: 8 << 10, MaxFiles: 10}.WithDefaults()
	r := NewRotator(nil)
	rotated := false
	w := &hookWriter{hook: func() {
		if !rotated {
			rotated = true
			if mode, err := r.rotate(p, o); err != nil || mode != ModeCollapse {
				t.Errorf("rotate = %q, %v", mode, err)
			}
		}
	}}
	if err := o.Stream(context.Background(), p, 3000, false, w); err != nil {
		t.Fatal(err)
	}
	if !rotated {
		t.Fatal("no rotation happened during the stream")
	}
	if got := strings.Split(strings.TrimSuffix(w.b.String(), "\n"), "\n"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("streamed %d lines across a rotation; first %q", len(got), got[:min(3, len(got))])
	}
}

// hookWriter calls hook before the first write.
type hookWriter struct {
	b    strings.Builder
	hook func()
}

func (h *hookWriter) Write(p []byte) (int, error) {
	h.hook()
	return h.b.Write(p)
}
