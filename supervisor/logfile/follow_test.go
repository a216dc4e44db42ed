package logfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startFollow runs o.Follow until the test ends and checks it returns nil.
func startFollow(t *testing.T, o Options, path string, fromEnd bool) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	errCh := make(chan error, 1)
	go func() { errCh <- o.Follow(ctx, path, fromEnd, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errCh; err != nil {
			t.Errorf("Follow: %v", err)
		}
	})
	return out
}

func waitOutput(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	proctest.WaitFor(t, 10*time.Second, fmt.Sprintf("output %q", want), func() bool {
		return strings.Contains(out.String(), want)
	})
}

func appendTo(t *testing.T, f *os.File, s string) {
	t.Helper()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func TestFollowStartAndEnd(t *testing.T) {
	t.Parallel()
	for _, fromEnd := range []bool{false, true} {
		t.Run(fmt.Sprintf("fromEnd=%v", fromEnd), func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "out.log")
			f, err := OpenAppend(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			appendTo(t, f, "old 1\nold 2\n")
			out := startFollow(t, Options{}, p, fromEnd)
			if fromEnd {
				// Follow gives no ready signal: write until it is seen.
				proctest.WaitFor(t, 10*time.Second, "follower ready", func() bool {
					appendTo(t, f, "ready\n")
					return strings.Contains(out.String(), "ready\n")
				})
			} else {
				waitOutput(t, out, "old 2\n")
			}
			appendTo(t, f, "new 1\npartial")
			waitOutput(t, out, "partial")
			appendTo(t, f, " line\n")
			waitOutput(t, out, "partial line\n")
			want := "new 1\npartial line\n"
			got := out.String()
			if fromEnd {
				got = strings.ReplaceAll(got, "ready\n", "")
			} else {
				want = "old 1\nold 2\n" + want
			}
			if got != want {
				t.Fatalf("followed %q, want %q", got, want)
			}
		})
	}
}

func TestFollowAcrossRotation(t *testing.T) {
	for _, mode := range []Mode{ModeCollapse, ModeTruncate} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if mode == ModeCollapse {
				requireCollapse(t, dir)
			}
			p := filepath.Join(dir, "out.log")
			f, err := OpenAppend(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r := NewRotator(testLogger(t))
			r.forceTruncate = mode == ModeTruncate
			o := Options{MaxBytes: 8 << 10, MaxFiles: 3}.WithDefaults()
			out := startFollow(t, o, p, false)
			var want strings.Builder
			// The follower is running once it has seen the first line.
			appendTo(t, f, "line 00000000\n")
			want.WriteString("line 00000000\n")
			waitOutput(t, out, "line 00000000\n")
			n := 1
			for round := range 6 {
				for range 1000 { // 14 KB per round
					s := fmt.Sprintf("line %08d\n", n)
					n++
					appendTo(t, f, s)
					want.WriteString(s)
				}
				if round%2 == 0 {
					// Rotate while the follower is probably behind: it must
					// catch up from path.1.
					if got, err := r.rotate(p, o); err != nil || got != mode {
						t.Fatalf("rotate = %q, %v", got, err)
					}
				} else {
					waitOutput(t, out, fmt.Sprintf("line %08d\n", n-1))
					if got, err := r.rotate(p, o); err != nil || got != mode {
						t.Fatalf("rotate = %q, %v", got, err)
					}
				}
			}
			waitOutput(t, out, fmt.Sprintf("line %08d\n", n-1))
			if got := out.String(); got != want.String() {
				nums, damaged := lineNumbers(t, []byte(got))
				t.Fatalf("followed %d lines (%d damaged), want %d in order", len(nums), damaged, n)
			}
		})
	}
}

// gatedBuffer is a syncBuffer whose writes can be held: a follower writing
// to it stops reading while held, so it falls behind the writer for sure.
type gatedBuffer struct {
	syncBuffer
	mu      sync.Mutex
	cond    *sync.Cond
	held    bool
	waiting int // writes blocked by the gate
}

func newGatedBuffer() *gatedBuffer {
	g := &gatedBuffer{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gatedBuffer) Write(p []byte) (int, error) {
	g.mu.Lock()
	for g.held {
		g.waiting++
		g.cond.Broadcast()
		g.cond.Wait()
		g.waiting--
	}
	g.mu.Unlock()
	return g.syncBuffer.Write(p)
}

func (g *gatedBuffer) hold(held bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held = held
	g.cond.Broadcast()
}

func (g *gatedBuffer) blocked() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting > 0
}

// TestFollowWhileChildWritesAndRotatorRuns follows a file that a child keeps
// appending to while Run rotates it. The follower is held (its output
// blocks) while two rotations are forced, so it must catch up from the
// rotated files; the child stops only after them.
func TestFollowWhileChildWritesAndRotatorRuns(t *testing.T) {
	for _, mode := range []Mode{ModeCollapse, ModeTruncate} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if mode == ModeCollapse {
				requireCollapse(t, dir)
			}
			p := filepath.Join(dir, "out.log")
			o := Options{MaxBytes: 16 << 10, MaxFiles: 1000}
			r := NewRotator(testLogger(t))
			r.forceTruncate = mode == ModeTruncate
			r.Add(p, o)
			startRotator(t, r)
			f, err := OpenAppend(p)
			if err != nil {
				t.Fatal(err)
			}
			out := newGatedBuffer()
			ctx, cancel := context.WithCancel(context.Background())
			errCh := make(chan error, 1)
			go func() { errCh <- o.Follow(ctx, p, false, out) }()
			t.Cleanup(func() {
				cancel()
				out.hold(false)
				if err := <-errCh; err != nil {
					t.Errorf("Follow: %v", err)
				}
			})
			out.hold(true)
			w := startStream(t, f, 1_000_000) // at most 14 MB
			f.Close()
			proctest.WaitFor(t, 10*time.Second, "follower held with data to write", out.blocked)
			for i := range 2 {
				proctest.WaitFor(t, 10*time.Second, fmt.Sprintf("log over its limit before rotation %d", i+1), func() bool {
					st, err := os.Stat(p)
					return err == nil && st.Size() > o.MaxBytes
				})
				if got, err := r.RotateNow(p); err != nil || (got != mode && got != "") {
					t.Fatalf("RotateNow #%d = %q, %v; want %q", i+1, got, err, mode)
				}
			}
			out.hold(false)
			lines := w.stop(t)
			waitOutput(t, &out.syncBuffer, fmt.Sprintf("line %08d\n", lines-1))
			stats := r.Stats()
			used := stats.Collapse
			if mode == ModeTruncate {
				used = stats.Truncate
			}
			if used < 2 || used != stats.Collapse+stats.Truncate || stats.Failed != 0 {
				t.Fatalf("rotations %+v: want at least 2, all in %s mode, none failed", stats, mode)
			}
			nums, damaged := lineNumbers(t, []byte(out.String()))
			t.Logf("mode %s: %+v, followed %d of %d lines, %d damaged", mode, stats, len(nums), lines, damaged)
			for i := 1; i < len(nums); i++ {
				if nums[i] <= nums[i-1] {
					t.Fatalf("followed line %d after %d: duplicated or reordered", nums[i], nums[i-1])
				}
			}
			if mode == ModeTruncate {
				return // may lose what is written in its two-syscall window
			}
			if len(nums) != lines || damaged != 0 {
				t.Fatalf("followed %d lines (%d damaged), want %d", len(nums), damaged, lines)
			}
		})
	}
}

func TestFollowExternalTruncate(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "out.log")
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	appendTo(t, f, "before truncation, a long line\n")
	out := startFollow(t, Options{}, p, false)
	waitOutput(t, out, "long line\n")
	if err := os.Truncate(p, 0); err != nil { // like `: > file`, no base recorded
		t.Fatal(err)
	}
	appendTo(t, f, "after\n")
	waitOutput(t, out, "after\n")
	if got, want := out.String(), "before truncation, a long line\nafter\n"; got != want {
		t.Fatalf("followed %q, want %q", got, want)
	}
}

func TestFollowRenameAndRecreate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "out.log")
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	appendTo(t, f, "first\n")
	out := startFollow(t, Options{}, p, false)
	waitOutput(t, out, "first\n")
	if err := os.Rename(p, filepath.Join(dir, "out.log.old")); err != nil {
		t.Fatal(err)
	}
	appendTo(t, f, "late write to the old file\n")
	g, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	appendTo(t, g, "new file\n")
	waitOutput(t, out, "new file\n")
	if got, want := out.String(), "first\nlate write to the old file\nnew file\n"; got != want {
		t.Fatalf("followed %q, want %q", got, want)
	}
}

func TestFollowLongLines(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "out.log")
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := startFollow(t, Options{MaxLineBytes: 10}, p, false)
	appendTo(t, f, "short\n0123456789")
	appendTo(t, f, "abcdef") // the cut happens across writes
	appendTo(t, f, strings.Repeat("z", 100_000)+"\nnext\n")
	waitOutput(t, out, "next\n")
	if got, want := out.String(), "short\n0123456789"+TruncatedMarker+"\nnext\n"; got != want {
		t.Fatalf("followed %q, want %q", got, want)
	}
}

type failWriter struct{}

var errSink = errors.New("sink closed")

func (failWriter) Write([]byte) (int, error) { return 0, errSink }

func TestFollowErrors(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(10*time.Second))
	defer cancel()
	p := filepath.Join(t.TempDir(), "out.log")
	writeFile(t, p, "data\n")
	if err := Follow(ctx, filepath.Join(p, "under-a-file.log"), false, &bytes.Buffer{}); !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("path under a regular file: %v", err)
	}
	if err := Follow(ctx, p, false, failWriter{}); !errors.Is(err, errSink) {
		t.Fatalf("failing writer: %v", err)
	}
	// A cancelled context is a clean return.
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if err := Follow(done, p, true, &bytes.Buffer{}); err != nil {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestFollowBeforeCreation(t *testing.T) {
	t.Parallel()
	// Neither the directory nor the file exists yet. (fromEnd is not
	// varied: whether Follow starts before or after the creation is a race
	// the test cannot order without a ready signal.)
	p := filepath.Join(t.TempDir(), "inst", "logs", "stdout.log")
	out := startFollow(t, Options{}, p, false)
	f, err := OpenAppend(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	appendTo(t, f, "first\n")
	waitOutput(t, out, "first\n")
	appendTo(t, f, "second\n")
	waitOutput(t, out, "second\n")
	if got := out.String(); got != "first\nsecond\n" {
		t.Fatalf("followed %q", got)
	}
}
