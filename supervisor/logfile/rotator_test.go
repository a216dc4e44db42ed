package logfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: tWriter{t}})
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startRotator runs r until the test ends.
func startRotator(t *testing.T, r *Rotator) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errCh := make(chan error, 1)
	go func() { errCh <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errCh; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Run is active once its watcher is installed.
	proctest.WaitFor(t, 5*time.Second, "rotator running", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.w != nil
	})
}

// readAll concatenates path.N … path.1, path.
func readAll(t *testing.T, path string, maxFiles int) []byte {
	t.Helper()
	var all []byte
	for i := maxFiles; i >= 0; i-- {
		p := path
		if i > 0 {
			p = rotatedName(path, i)
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		o     Options
		field string
	}{
		{"zero", Options{}, ""},
		{"valid", Options{MaxBytes: 1, MaxFiles: 1, MaxLineBytes: 1}, ""},
		{"negative max bytes", Options{MaxBytes: -1}, "max_bytes"},
		{"negative max files", Options{MaxFiles: -2}, "max_files"},
		{"negative max line", Options{MaxLineBytes: -3}, "max_line_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate = %v, want ErrInvalidOptions naming %s", err, tc.field)
			}
		})
	}
	d := Options{}.WithDefaults()
	if d.MaxBytes != DefaultMaxBytes || d.MaxFiles != DefaultMaxFiles || d.MaxLineBytes != DefaultMaxLineBytes {
		t.Fatalf("WithDefaults = %+v", d)
	}
	if k := (Options{MaxBytes: 7, MaxFiles: 2, MaxLineBytes: 3}).WithDefaults(); k != (Options{7, 2, 3}) {
		t.Fatalf("WithDefaults changed set fields: %+v", k)
	}
}

func TestOpenAppend(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "a", "b", "out.log")
	for i := range 2 { // the second open appends
		f, err := OpenAppend(path)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "hello %d\n", i)
		f.Close()
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "hello 0\nhello 1\n" {
		t.Fatalf("content %q, %v", b, err)
	}
	st, _ := os.Stat(path)
	dst, _ := os.Stat(filepath.Dir(path))
	if st.Mode().Perm() != 0o640 || dst.Mode().Perm() != 0o750 {
		t.Fatalf("modes file %v dir %v, want 0640 and 0750", st.Mode().Perm(), dst.Mode().Perm())
	}
	if _, err := OpenAppend(filepath.Join(path, "under-a-file")); err == nil {
		t.Fatal("OpenAppend under a regular file succeeded")
	}
}

func TestRotateNamesAndCount(t *testing.T) {
	for _, mode := range []Mode{ModeCollapse, ModeTruncate} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if mode == ModeCollapse {
				requireCollapse(t, dir)
			}
			path := filepath.Join(dir, "app.log")
			o := Options{MaxBytes: 10 << 10, MaxFiles: 3}.WithDefaults()
			r := NewRotator(testLogger(t))
			r.forceTruncate = mode == ModeTruncate
			f, err := OpenAppend(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			before, _ := f.Stat()
			chunk := bytes.Repeat([]byte("0123456789abcde\n"), 1024) // 16 KiB
			var written []byte
			for i := range 6 {
				c := bytes.ReplaceAll(chunk, []byte("0123"), fmt.Appendf(nil, "%04d", i))
				if _, err := f.Write(c); err != nil {
					t.Fatal(err)
				}
				written = append(written, c...)
				got, err := r.rotate(path, o)
				if err != nil || got != mode {
					t.Fatalf("rotate #%d = %q, %v; want %q", i, got, err, mode)
				}
			}
			for i := 1; i <= 3; i++ {
				if _, err := os.Stat(rotatedName(path, i)); err != nil {
					t.Fatalf("rotated file %d: %v", i, err)
				}
			}
			for _, p := range []string{rotatedName(path, 4)} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s exists (err %v), want only %d rotated files", filepath.Base(p), err, 3)
				}
			}
			after, err := os.Stat(path)
			if err != nil || !os.SameFile(before, after) {
				t.Fatalf("active file replaced (err %v); it must keep its name and inode", err)
			}
			// The newest data, in order, without duplicates: the kept files
			// are a suffix of everything written.
			all := readAll(t, path, 3)
			if !bytes.HasSuffix(written, all) || len(all) < 3*len(chunk) {
				t.Fatalf("kept %d bytes that are not a suffix of the %d written", len(all), len(written))
			}
			// Below the limit nothing happens.
			if got, err := r.rotate(path, o); got != "" || err != nil {
				t.Fatalf("rotate under limit = %q, %v", got, err)
			}
		})
	}
}

// TestRotatorRunWithWritingChild rotates a file that a child process keeps
// appending to, with Run active: rotations are forced with RotateNow while
// the child writes (Run rotates too, at its own pace), the child stops only
// after them, and Run's own last rotation brings the file under its limit.
func TestRotatorRunWithWritingChild(t *testing.T) {
	for _, mode := range []Mode{ModeCollapse, ModeTruncate} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			const forced = 4
			dir := t.TempDir()
			if mode == ModeCollapse {
				requireCollapse(t, dir)
			}
			path := filepath.Join(dir, "logs", "out.log")
			r := NewRotator(testLogger(t))
			r.forceTruncate = mode == ModeTruncate
			o := Options{MaxBytes: 32 << 10, MaxFiles: 1000}
			r.Add(path, o)
			startRotator(t, r)

			f, err := OpenAppend(path)
			if err != nil {
				t.Fatal(err)
			}
			w := startStream(t, f, 2_000_000) // at most 28 MB
			f.Close()                         // the child keeps writing through its own descriptor
			for i := range forced {
				proctest.WaitFor(t, 10*time.Second, fmt.Sprintf("log over its limit before rotation %d", i+1), func() bool {
					st, err := os.Stat(path)
					return err == nil && st.Size() > o.MaxBytes
				})
				// Run may have rotated since the check: "" is then a valid answer.
				if got, err := r.RotateNow(path); err != nil || (got != mode && got != "") {
					t.Fatalf("RotateNow #%d = %q, %v; want %q", i+1, got, err, mode)
				}
			}
			lines := w.stop(t)
			proctest.WaitFor(t, 10*time.Second, "final rotation by Run", func() bool {
				st, err := os.Stat(path)
				return err == nil && st.Size() <= o.MaxBytes
			})
			stats := r.Stats()
			used := stats.Collapse
			if mode == ModeTruncate {
				used = stats.Truncate
			}
			if used < forced || used != stats.Collapse+stats.Truncate || stats.Failed != 0 {
				t.Fatalf("rotations %+v: want at least %d, all in %s mode, none failed", stats, forced, mode)
			}
			nums, damaged := lineNumbers(t, readAll(t, path, o.MaxFiles))
			for i := 1; i < len(nums); i++ {
				if nums[i] <= nums[i-1] {
					t.Fatalf("line %d after %d: duplicated or reordered", nums[i], nums[i-1])
				}
			}
			lost := lines - len(nums)
			t.Logf("mode %s: %+v, %d of %d lines lost, %d damaged", mode, stats, lost, lines, damaged)
			if mode == ModeCollapse && (lost != 0 || damaged != 0) {
				t.Fatalf("collapse mode lost %d lines, damaged %d", lost, damaged)
			}
			if len(nums) == 0 {
				t.Fatalf("no line kept of %d written", lines)
			}
			// Truncate mode may lose what is written in its two-syscall window
			// (more under -race on a busy machine), the last line too when
			// the last rotation overlaps the last writes; it never duplicates.
			if mode == ModeCollapse && nums[len(nums)-1] != lines-1 {
				t.Fatalf("last line kept is %d, not the last written (%d)", nums[len(nums)-1], lines-1)
			}
		})
	}
}

func TestRotateNowUnregistered(t *testing.T) {
	t.Parallel()
	r := NewRotator(nil)
	p := filepath.Join(t.TempDir(), "a.log")
	if _, err := r.RotateNow(p); !errors.Is(err, ErrNotRegistered) || !strings.Contains(err.Error(), p) {
		t.Fatalf("RotateNow of an unregistered path = %v, want ErrNotRegistered naming it", err)
	}
	r.Add(p, Options{MaxBytes: 1 << 10})
	if got, err := r.RotateNow(p); got != "" || err != nil { // registered, not created yet
		t.Fatalf("RotateNow of a missing file = %q, %v; want nothing done", got, err)
	}
}

func TestRotatorAddRemove(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	r := NewRotator(testLogger(t))
	o := Options{MaxBytes: 1 << 10, MaxFiles: 2}
	r.Add(a, o)
	startRotator(t, r)
	r.Add(b, o) // added while running: watched at once
	r.Remove(a)
	big := bytes.Repeat([]byte("x\n"), 1<<10)
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, big, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	proctest.WaitFor(t, 5*time.Second, "b rotated", func() bool {
		_, err := os.Stat(rotatedName(b, 1))
		return err == nil
	})
	r.Remove(b)
	// a was removed before it grew: it was never rotated. Checked after b's
	// rotation, which was triggered by events queued after a's write.
	if _, err := os.Stat(rotatedName(a, 1)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed file rotated (err %v)", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.files) != 0 || len(r.dirs) != 0 || len(r.wds) != 0 {
		t.Fatalf("state left after Remove: %d files %d dirs %d watches", len(r.files), len(r.dirs), len(r.wds))
	}
}

func TestRotatorTickerFallback(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "a.log")
	r := NewRotator(testLogger(t))
	r.forceTicker = true
	r.Add(p, Options{MaxBytes: 1 << 10, MaxFiles: 2})
	startRotator(t, r)
	if err := os.WriteFile(p, bytes.Repeat([]byte("y\n"), 1<<10), 0o640); err != nil {
		t.Fatal(err)
	}
	proctest.WaitFor(t, 3*fallbackTick, "rotation by ticker", func() bool {
		_, err := os.Stat(rotatedName(p, 1))
		return err == nil
	})
}

func TestRotatorRunTwice(t *testing.T) {
	t.Parallel()
	r := NewRotator(nil)
	startRotator(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(5*time.Second))
	defer cancel()
	if err := r.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
}

func TestCollapseLen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ size, bs, want int64 }{
		{10000, 4096, 8192},
		{8192, 4096, 4096},
		{8193, 4096, 8192},
		{4096, 4096, 0},
		{100, 4096, 0},
		{100, 0, 0},
	} {
		if got := collapseLen(tc.size, tc.bs); got != tc.want {
			t.Errorf("collapseLen(%d, %d) = %d, want %d", tc.size, tc.bs, got, tc.want)
		}
	}
}

func BenchmarkRotatorScan1000(b *testing.B) {
	dir := b.TempDir()
	r := NewRotator(nil)
	for i := range 1000 {
		p := filepath.Join(dir, fmt.Sprintf("inst-%04d", i), "stdout.log")
		f, err := OpenAppend(p)
		if err != nil {
			b.Fatal(err)
		}
		f.WriteString("some output\n")
		f.Close()
		r.Add(p, Options{})
	}
	b.ReportAllocs()
	for b.Loop() {
		r.scanAll()
	}
}

// BenchmarkRotate10MiB measures one rotation of a 10 MiB file in each mode
// (the time during which the active file's head is being moved).
func BenchmarkRotate10MiB(b *testing.B) {
	chunk := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq\n"), 16<<10) // 1 MiB
	for _, mode := range []Mode{ModeCollapse, ModeTruncate} {
		b.Run(string(mode), func(b *testing.B) {
			dir := b.TempDir()
			if mode == ModeCollapse {
				requireCollapse(b, dir)
			}
			path := filepath.Join(dir, "app.log")
			r := NewRotator(nil)
			r.forceTruncate = mode == ModeTruncate
			o := Options{MaxBytes: 10 << 20, MaxFiles: 2}.WithDefaults()
			f, err := OpenAppend(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				for range 11 {
					f.Write(chunk)
				}
				b.StartTimer()
				if got, err := r.rotate(path, o); err != nil || got != mode {
					b.Fatalf("rotate = %q, %v", got, err)
				}
			}
		})
	}
}
