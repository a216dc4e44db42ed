package supervisor

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/supervisor/logfile"
	"github.com/visorhq/visor/supervisor/restart"
)

// syncBuffer is a bytes.Buffer safe for Follow's writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestLogsTailFollowRotate(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	ctx := ctxT(t)
	stdout := h.LogPath("talk", "stdout")

	// Follow from the start, before the file exists.
	fctx, stopFollow := context.WithCancel(ctx)
	var followed syncBuffer
	followDone := make(chan error, 1)
	go func() { followDone <- logfile.Follow(fctx, stdout, false, &followed) }()

	spec := Spec{ID: "talk", Command: proctest.Command("print-lines", "200"), Env: proctest.Env(),
		Restart: restart.Policy{Mode: restart.ModeNever}}
	if _, err := h.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Wait(ctx, "talk"); err != nil {
		t.Fatal(err)
	}
	lines, err := logfile.Tail(stdout, 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"line 00197", "line 00198", "line 00199"}; strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("Tail() = %q, want %q", lines, want)
	}
	if errLines, err := logfile.Tail(h.LogPath("talk", "stderr"), 1); err != nil || len(errLines) != 1 || errLines[0] != "done" {
		t.Fatalf("stderr Tail() = %q, %v", errLines, err)
	}
	proctest.WaitFor(t, 10*time.Second, "followed output", func() bool {
		return strings.Contains(followed.String(), "line 00199\n")
	})
	stopFollow()
	if err := <-followDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow() = %v", err)
	}

	// Rotation: the active file keeps its name, rotated files are kept.
	big := Spec{ID: "big", Command: proctest.Command("print-lines", "3000", "100"), Env: proctest.Env(),
		Restart: restart.Policy{Mode: restart.ModeNever},
		Logs:    logfile.Options{MaxBytes: 64 << 10, MaxFiles: 2}}
	if _, err := h.Start(ctx, big); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Wait(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	path := h.LogPath("big", "stdout")
	proctest.WaitFor(t, 20*time.Second, "rotated log", func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Size() <= 64<<10 && fileExists(path+".1")
	})
	if fileExists(path + ".3") {
		t.Fatal("more rotated files than MaxFiles")
	}
	last, err := logfile.Tail(path, 1)
	if err != nil || len(last) != 1 || !strings.HasPrefix(last[0], "line 02999") {
		t.Fatalf("Tail() after rotation = %q, %v", last, err)
	}
}
