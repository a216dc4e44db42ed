package logfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary act as a workload instead of running tests.
const helperEnv = "VISOR_LOGFILE_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	goleak.VerifyTestMain(m)
}

// runHelper implements the helper workloads:
//
//	writer:N  writes lines "line %08d" for 0..N-1 to stdout, then exits.
//	stream:N  writes such lines until its stdin reaches end of file (or N
//	          lines are written), then writes "wrote COUNT" to stderr and
//	          exits.
func runHelper(mode string) int {
	var n int
	var stream bool
	if _, err := fmt.Sscanf(mode, "writer:%d", &n); err != nil {
		if _, err := fmt.Sscanf(mode, "stream:%d", &n); err != nil {
			fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
			return 2
		}
		stream = true
	}
	var stop atomic.Bool
	if stream {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			stop.Store(true)
		}()
	}
	w := bufio.NewWriterSize(os.Stdout, 256) // small writes, like a chatty process
	i := 0
	for ; i < n && !stop.Load(); i++ {
		w.WriteString("line ")
		w.WriteString(fmt.Sprintf("%08d", i))
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		return 1
	}
	if stream {
		fmt.Fprintf(os.Stderr, "wrote %d\n", i)
	}
	return 0
}

// streamWriter is a running "stream" helper whose stdout is a log file.
type streamWriter struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *syncBuffer
	max    int
	done   bool
}

// startStream starts a child that appends lines to f until stop (at most
// max lines, a bound on disk use). The child is killed if the test ends
// first, and stops by itself when the test binary dies (its stdin closes).
func startStream(t *testing.T, f *os.File, max int) *streamWriter {
	t.Helper()
	w := &streamWriter{stderr: &syncBuffer{}, max: max}
	w.cmd = exec.Command(os.Args[0])
	w.cmd.Env = append(os.Environ(), fmt.Sprintf("%s=stream:%d", helperEnv, max))
	w.cmd.Stdout = f
	w.cmd.Stderr = w.stderr
	var err error
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !w.done {
			w.cmd.Process.Kill()
			w.cmd.Wait()
		}
	})
	return w
}

// stop ends the child and returns how many lines it wrote.
func (w *streamWriter) stop(t *testing.T) int {
	t.Helper()
	w.stdin.Close()
	err := w.cmd.Wait()
	w.done = true
	if err != nil {
		t.Fatalf("writer: %v (stderr %q)", err, w.stderr.String())
	}
	var n int
	if _, err := fmt.Sscanf(w.stderr.String(), "wrote %d", &n); err != nil {
		t.Fatalf("writer stderr %q: %v", w.stderr.String(), err)
	}
	if n == w.max {
		t.Logf("writer reached its bound of %d lines before it was stopped", n)
	}
	return n
}

// requireCollapse skips t unless the file system holding dir supports
// collapse-mode rotation (FALLOC_FL_COLLAPSE_RANGE: ext4 and xfs do; tmpfs,
// btrfs and overlayfs do not, and the Rotator then falls back to truncate
// mode, which may lose lines).
func requireCollapse(t testing.TB, dir string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "collapse-probe-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	bs := blockSize(st)
	if bs <= 0 {
		t.Skipf("collapse-mode rotation not checked: no block size for %s on this system", dir)
	}
	if _, err := f.Write(make([]byte, 3*bs)); err != nil {
		t.Fatal(err)
	}
	switch err := collapseHead(f, bs); {
	case errors.Is(err, errCollapseUnsupported):
		t.Skipf("collapse-mode rotation not checked: the file system of %s cannot collapse ranges "+
			"(tmpfs, btrfs and overlayfs cannot; set TMPDIR to a directory on ext4 or xfs to run this test)",
			filepath.Dir(f.Name()))
	case err != nil:
		t.Fatalf("collapse probe: %v", err)
	}
}

// lineNumbers parses "line %08d" lines. A line that only ends with such a
// record (the head of another line was joined to it because bytes were lost
// in between) yields that record and counts as damaged; a line without a
// whole record only counts as damaged.
func lineNumbers(t *testing.T, data []byte) (nums []int, damaged int) {
	t.Helper()
	sc := bufio.NewScanner(bytesReader(data))
	for sc.Scan() {
		s := sc.Text()
		i := strings.LastIndex(s, "line ")
		if i < 0 || len(s)-i != 13 {
			damaged++
			continue
		}
		v, err := strconv.Atoi(s[i+5:])
		if err != nil {
			damaged++
			continue
		}
		if i > 0 {
			damaged++
		}
		nums = append(nums, v)
	}
	return nums, damaged
}
