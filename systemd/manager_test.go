package systemd

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// recorder is a Runner that records each command line and answers
// "systemctl is-active" with state.
type recorder struct {
	mu    sync.Mutex
	calls []string
	state string
}

func (r *recorder) run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	line := strings.Join(append([]string{name}, args...), " ")
	r.calls = append(r.calls, line)
	if len(args) > 0 && args[0] == "is-active" {
		return []byte(r.state + "\n"), nil
	}
	return nil, nil
}

// take returns the calls since the last take.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

// testLogger routes the Manager's log lines to t.Log.
func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: tWriter{t}, Level: hclog.Debug})
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// tree lists every file, directory and symlink under root (relative,
// sorted), so a test can check exactly what an operation left behind.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func testOptions() Options {
	return Options{
		Binary:     "/usr/bin/visor",
		ConfigPath: "/etc/visor/agent.json",
		Args:       []string{"-host", "h1"},
	}
}

func eq(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

func TestManagerSystemdRoot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := t.TempDir()
	rec := &recorder{state: "active"}
	m, err := New(Config{
		Init: InitSystemd, Root: root, Options: testOptions(),
		Run: rec.run, InitRunning: func() bool { return true }, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}

	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "status before install", st, Status{Init: InitSystemd, Path: "/etc/systemd/system/visor-agent.service", State: "not-installed"})
	if err := m.Start(ctx); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Start before install = %v, want ErrNotInstalled", err)
	}

	res, err := m.Install(ctx)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	eq(t, "install result", res, Result{Init: InitSystemd, Path: "/etc/systemd/system/visor-agent.service", Changed: true, Reloaded: true})
	eq(t, "files", tree(t, root), []string{"etc", "etc/systemd", "etc/systemd/system", "etc/systemd/system/visor-agent.service"})
	eq(t, "calls", rec.take(), []string{"systemctl daemon-reload", "systemctl enable visor-agent.service"})
	want, _ := Render(InitSystemd, testOptions())
	got, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/visor-agent.service"))
	if err != nil || string(got) != string(want) {
		t.Errorf("installed unit = %q, %v; want the rendered unit", got, err)
	}

	// Idempotent: the same install again changes nothing on disk.
	res, err = m.Install(ctx)
	if err != nil {
		t.Fatalf("second Install: %v", err)
	}
	if res.Changed {
		t.Errorf("second Install reported a change")
	}
	eq(t, "files after second install", tree(t, root), []string{"etc", "etc/systemd", "etc/systemd/system", "etc/systemd/system/visor-agent.service"})
	rec.take()

	for _, tc := range []struct {
		name string
		do   func(context.Context) error
		call string
	}{
		{"start", m.Start, "systemctl start visor-agent.service"},
		{"stop", m.Stop, "systemctl stop visor-agent.service"},
		{"restart", m.Restart, "systemctl restart visor-agent.service"},
	} {
		if err := tc.do(ctx); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		eq(t, tc.name+" calls", rec.take(), []string{tc.call})
	}
	st, err = m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "status", st, Status{Init: InitSystemd, Path: "/etc/systemd/system/visor-agent.service", Installed: true, State: "active"})
	rec.take()

	res, err = m.Uninstall(ctx)
	if err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	eq(t, "uninstall result", res, Result{Init: InitSystemd, Path: "/etc/systemd/system/visor-agent.service", Changed: true, Reloaded: true})
	eq(t, "uninstall calls", rec.take(), []string{"systemctl disable --now visor-agent.service", "systemctl daemon-reload"})
	eq(t, "files after uninstall", tree(t, root), []string{"etc", "etc/systemd", "etc/systemd/system"})

	if _, err := m.Uninstall(ctx); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("second Uninstall = %v, want ErrNotInstalled", err)
	}
	eq(t, "calls of second uninstall", rec.take(), []string(nil))
}

func TestManagerSystemdNotRunning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := t.TempDir()
	rec := &recorder{}
	m, err := New(Config{Init: InitSystemd, Root: root, Options: testOptions(), Run: rec.run, InitRunning: func() bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.Reloaded {
		t.Errorf("install result %+v, want changed and not reloaded", res)
	}
	if err := m.Start(ctx); !errors.Is(err, ErrInitNotRunning) {
		t.Errorf("Start = %v, want ErrInitNotRunning", err)
	}
	st, err := m.Status(ctx)
	if err != nil || st.State != "init-not-running" || !st.Installed {
		t.Errorf("Status = %+v, %v; want installed, init-not-running", st, err)
	}
	if _, err := m.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	eq(t, "calls", rec.take(), []string(nil))
	eq(t, "files", tree(t, root), []string{"etc", "etc/systemd", "etc/systemd/system"})
}

func TestManagerLaunchdRoot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	root := t.TempDir()
	rec := &recorder{}
	m, err := New(Config{Init: InitLaunchd, Root: root, Options: testOptions(), Run: rec.run, InitRunning: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Install(ctx); err != nil {
		t.Fatal(err)
	}
	eq(t, "files", tree(t, root), []string{"Library", "Library/LaunchDaemons", "Library/LaunchDaemons/visor-agent.plist"})
	eq(t, "install calls", rec.take(), []string(nil))
	plist := filepath.Join(root, "Library/LaunchDaemons/visor-agent.plist")
	data, err := os.ReadFile(plist)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodePlist(data); err != nil {
		t.Errorf("installed plist: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	eq(t, "control calls", rec.take(), []string{"launchctl load " + plist, "launchctl kickstart -k system/visor-agent"})
	if _, err := m.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	eq(t, "uninstall calls", rec.take(), []string{"launchctl unload " + plist})
	eq(t, "files after uninstall", tree(t, root), []string{"Library", "Library/LaunchDaemons"})
}

// TestManagerBadInput checks that invalid options fail before anything is
// written or any init command runs.
func TestManagerBadInput(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		init string
		opts Options
		want error
	}{
		{"relative config", InitSystemd, Options{Binary: "/usr/bin/visor", ConfigPath: "etc/agent.json"}, ErrInvalidOptions},
		{"relative binary", InitLaunchd, Options{Binary: "visor"}, ErrInvalidOptions},
		{"newline in flag", InitSystemd, Options{Binary: "/usr/bin/visor", Args: []string{"-host", "x\nExecStartPre=/bin/rm"}}, ErrInvalidOptions},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			rec := &recorder{}
			m, err := New(Config{Init: tc.init, Root: root, Options: tc.opts, Run: rec.run, InitRunning: func() bool { return true }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Install(context.Background()); !errors.Is(err, tc.want) {
				t.Fatalf("Install = %v, want %v", err, tc.want)
			}
			eq(t, "files", tree(t, root), []string(nil))
			eq(t, "calls", rec.take(), []string(nil))
		})
	}
	if _, err := New(Config{Init: "upstart"}); !errors.Is(err, ErrUnknownInit) {
		t.Errorf("New with init upstart = %v, want ErrUnknownInit", err)
	}
}
