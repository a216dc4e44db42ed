package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/ui"
)

// The dashboard's view of this host (uiLocal) on a fake of its own narrow
// interface (uiSupervisor) and real log files: no etcd, no processes.

// fakeUISupervisor is a uiSupervisor with statuses by id and log files in
// dir (id.stream).
type fakeUISupervisor struct {
	dir string
	sts map[string]supervisor.Status
}

func (f fakeUISupervisor) Has(id string) bool { _, ok := f.sts[id]; return ok }

func (f fakeUISupervisor) LogPath(id, stream string) string {
	return filepath.Join(f.dir, id+"."+stream)
}

func (f fakeUISupervisor) Status(id string) (supervisor.Status, bool) {
	st, ok := f.sts[id]
	return st, ok
}

// notifyBuffer is a writer that closes got once it holds want.
type notifyBuffer struct {
	mu   sync.Mutex
	b    bytes.Buffer
	want string
	got  chan struct{}
	once sync.Once
}

func (n *notifyBuffer) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.b.Write(p)
	if n.b.String() == n.want {
		n.once.Do(func() { close(n.got) })
	}
	return len(p), nil
}

func TestUILocal(t *testing.T) {
	sup := fakeUISupervisor{dir: t.TempDir(), sts: map[string]supervisor.Status{
		"run":  {ID: "run", PID: 42, CPUPercent: 12.5, RSSBytes: 1 << 20},
		"gone": {ID: "gone"},
		"new":  {ID: "new", PID: 43},
	}}
	must(t, os.WriteFile(sup.LogPath("run", "stdout"), []byte("a\nb\nc\n"), 0o600))
	l := uiLocal{sup}
	ctx := context.Background()

	t.Run("has", func(t *testing.T) {
		if !l.Has("run") || l.Has("elsewhere") {
			t.Errorf("Has(run), Has(elsewhere) = %v, %v; want true, false", l.Has("run"), l.Has("elsewhere"))
		}
	})
	t.Run("logs of an instance elsewhere", func(t *testing.T) {
		var b bytes.Buffer
		if err := l.Logs(ctx, "elsewhere", "stdout", 10, false, &b); !errors.Is(err, ui.ErrNotLocal) {
			t.Errorf("Logs = %v, want ui.ErrNotLocal", err)
		}
	})
	t.Run("logs tail", func(t *testing.T) {
		var b bytes.Buffer
		must(t, l.Logs(ctx, "run", "stdout", 2, false, &b))
		if b.String() != "b\nc\n" {
			t.Errorf("Logs tail 2 = %q, want %q", b.String(), "b\nc\n")
		}
	})
	t.Run("logs not written yet", func(t *testing.T) {
		var b bytes.Buffer
		if err := l.Logs(ctx, "new", "stderr", 10, false, &b); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Logs of a missing file without follow = %v, want os.ErrNotExist", err)
		}
	})
	t.Run("logs followed before the file exists", func(t *testing.T) {
		fctx, cancel := context.WithCancel(ctx)
		defer cancel()
		w := &notifyBuffer{want: "first\n", got: make(chan struct{})}
		done := make(chan error, 1)
		go func() { done <- l.Logs(fctx, "new", "stdout", 10, true, w) }()
		must(t, os.WriteFile(sup.LogPath("new", "stdout"), []byte("first\n"), 0o600))
		select {
		case <-w.got:
		case err := <-done:
			t.Fatalf("Logs with follow returned %v before the file's first line", err)
		case <-time.After(testtime.Scaled(10 * time.Second)):
			t.Fatal("the followed file's first line never came")
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Logs with follow ended with %v, want nil once its context ended", err)
			}
		case <-time.After(testtime.Scaled(10 * time.Second)):
			t.Fatal("Logs with follow did not return after its context ended")
		}
	})
	t.Run("usage", func(t *testing.T) {
		for _, tc := range []struct {
			id  string
			cpu float64
			rss uint64
			ok  bool
		}{
			{"run", 12.5, 1 << 20, true},
			{"gone", 0, 0, false}, // no process
			{"elsewhere", 0, 0, false},
		} {
			cpu, rss, ok := l.Usage(tc.id)
			if cpu != tc.cpu || rss != tc.rss || ok != tc.ok {
				t.Errorf("Usage(%s) = %v, %v, %v; want %v, %v, %v", tc.id, cpu, rss, ok, tc.cpu, tc.rss, tc.ok)
			}
		}
	})
}
