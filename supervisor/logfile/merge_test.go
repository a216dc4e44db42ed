package logfile

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openLogs(t *testing.T, names ...string) ([]Source, []*os.File) {
	t.Helper()
	dir := t.TempDir()
	var srcs []Source
	var files []*os.File
	for _, n := range names {
		p := filepath.Join(dir, n+".log")
		f, err := OpenAppend(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		srcs = append(srcs, Source{Label: n, Path: p})
		files = append(files, f)
	}
	return srcs, files
}

// TestStreamMergedHistory: without follow, each source's last n lines come
// labelled, the first source's before the second's; an unterminated last
// line is ended.
func TestStreamMergedHistory(t *testing.T) {
	t.Parallel()
	srcs, f := openLogs(t, "stdout", "stderr")
	appendTo(t, f[0], "o1\no2\no3\n")
	appendTo(t, f[1], "e1\ne2\ne3")
	var out syncBuffer
	if err := (Options{}).StreamMerged(context.Background(), srcs, 2, false, &out); err != nil {
		t.Fatal(err)
	}
	want := "stdout | o2\nstdout | o3\nstderr | e2\nstderr | e3\n"
	if got := out.String(); got != want {
		t.Fatalf("merged history:\n%s\nwant:\n%s", got, want)
	}
}

// TestStreamMergedFollowInterleaves: with follow, after both histories,
// lines appended to either file come out in the order they were written
// (each is awaited before the next is written), labelled; a line written
// in two pieces comes out whole.
func TestStreamMergedFollowInterleaves(t *testing.T) {
	t.Parallel()
	srcs, f := openLogs(t, "stdout", "stderr")
	appendTo(t, f[0], "old out\n")
	appendTo(t, f[1], "old err\n")
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (Options{}).StreamMerged(ctx, srcs, 10, true, out) }()
	want := "stdout | old out\nstderr | old err\n"
	waitOutput(t, out, want)
	steps := []struct {
		file int
		text string
		line string
	}{
		{1, "e-one\n", "stderr | e-one\n"},
		{0, "o-one\n", "stdout | o-one\n"},
		{1, "e-tw", ""},
		{1, "o\n", "stderr | e-two\n"},
		{0, "o-two\n", "stdout | o-two\n"},
	}
	for _, s := range steps {
		appendTo(t, f[s.file], s.text)
		if s.line != "" {
			want += s.line
			waitOutput(t, out, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("StreamMerged: %v", err)
	}
	if got := out.String(); got != want {
		t.Fatalf("merged follow:\n%s\nwant:\n%s", got, want)
	}
}

// TestStreamMergedMissingFile: a source without a file yet has no history;
// with follow its file is awaited; without follow only all files missing
// is an error.
func TestStreamMergedMissingFile(t *testing.T) {
	t.Parallel()
	srcs, f := openLogs(t, "stdout")
	errPath := filepath.Join(filepath.Dir(srcs[0].Path), "stderr.log")
	srcs = append(srcs, Source{Label: "stderr", Path: errPath})
	appendTo(t, f[0], "o1\n")
	var hist syncBuffer
	if err := (Options{}).StreamMerged(context.Background(), srcs, 5, false, &hist); err != nil || hist.String() != "stdout | o1\n" {
		t.Fatalf("history with one file missing: %q, %v", hist.String(), err)
	}
	none := []Source{{Label: "x", Path: errPath}}
	if err := (Options{}).StreamMerged(context.Background(), none, 5, false, io.Discard); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("every file missing: %v, want fs.ErrNotExist", err)
	}

	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (Options{}).StreamMerged(ctx, srcs, 5, true, out) }()
	waitOutput(t, out, "stdout | o1\n")
	fe, err := OpenAppend(errPath)
	if err != nil {
		t.Fatal(err)
	}
	defer fe.Close()
	appendTo(t, fe, "late\n")
	waitOutput(t, out, "stderr | late\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("StreamMerged: %v", err)
	}
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Fatalf("output %q: %d lines, want 2", out.String(), n)
	}
}
