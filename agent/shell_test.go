package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// TestAgentShellLines runs proc types whose command lines are valid shell
// but start with a builtin or keyword (issue 13 item 4, issue 14 row 10:
// until, :, case, !, source and exit 1 ended "failed: command not found")
// through a real agent and registry: each reaches running and does what it
// says, or exits with its own code; a simple command's instance is the
// program itself; a missing program releases the ticket with its name.
func TestAgentShellLines(t *testing.T) {
	f := newFixture(t)
	// No reconciler: it replaces an instance that exited (within a
	// debounce of ~200 ms), and the test must see the one that exited
	// with its code (it failed so under load).
	f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true; c.DisableReconciler = true })
	const keep = -1
	cases := []struct {
		app, line string
		exit      int    // keep: the instance runs
		out       string // what the line writes to ./out
		program   string // the running instance's process
		bash      bool
	}{
		{app: "until", line: "until true; do :; done; echo until-ok >out; exec sleep 3600", exit: keep, out: "until-ok", program: "sleep"},
		{app: "colon", line: ": web; echo colon-ok >out; exec sleep 3600", exit: keep, out: "colon-ok", program: "sleep"},
		{app: "case", line: `case "$VISOR_PROC" in web) echo case-ok >out;; esac; exec sleep 3600`, exit: keep, out: "case-ok", program: "sleep"},
		{app: "negation", line: "! false && echo neg-ok >out && exec sleep 3600", exit: keep, out: "neg-ok", program: "sleep"},
		{app: "source", line: "source ./env.sh && echo $FROM_ENV >out && exec sleep 3600", exit: keep, out: "sourced-ok", program: "sleep", bash: true},
		{app: "port", line: "exec sleep $PORT", exit: keep, program: "sleep"},
		{app: "direct", line: `sleep "3600"`, exit: keep, program: "sleep"},
		{app: "exit", line: "exit 1", exit: 1},
		{app: "pipe", line: "echo pipe-ok | tee out >/dev/null && exit 3", exit: 3, out: "pipe-ok"},
	}
	_, haveBash := exec.LookPath("bash")
	for _, tc := range cases {
		if tc.bash && haveBash != nil {
			t.Logf("%s: no bash on this host, skipped", tc.app)
			continue
		}
		dir := t.TempDir()
		must(t, os.WriteFile(filepath.Join(dir, "env.sh"), []byte("FROM_ENV=sourced-ok\n"), 0o644))
		_, err := f.reg.RegisterApp(f.ctx, registry.App{Name: tc.app})
		must(t, err)
		_, err = f.reg.RegisterRevision(f.ctx, registry.Revision{App: tc.app, Name: "v1", Dir: dir})
		must(t, err)
		_, err = f.reg.SetProcType(f.ctx, registry.ProcType{App: tc.app, Name: "web", Command: tc.line,
			StopTimeout: registry.Duration(2 * time.Second), Restart: registry.RestartPolicy{Policy: "never"}})
		must(t, err)
		_, err = f.reg.Scale(f.ctx, tc.app, "v1", "web", 1)
		must(t, err)
		t.Cleanup(func() {
			if tc.out != "" {
				b, _ := os.ReadFile(filepath.Join(dir, "out"))
				if !strings.Contains(string(b), tc.out) {
					t.Errorf("%s: %q wrote %q, want %q", tc.app, tc.line, b, tc.out)
				}
			}
		})
	}
	for _, tc := range cases {
		if tc.bash && haveBash != nil {
			continue
		}
		var in registry.Instance
		proctest.WaitFor(t, 30*time.Second, tc.app+" instance settled", func() bool {
			insts, err := f.reg.AppInstances(f.ctx, tc.app)
			must(t, err)
			if len(insts) != 1 {
				return false
			}
			in = insts[0]
			if tc.exit == keep {
				return in.State == registry.InstanceRunning
			}
			return in.State.Terminal()
		})
		if tc.exit != keep {
			if in.State != registry.InstanceExited || in.ExitCode == nil || *in.ExitCode != tc.exit {
				t.Errorf("%s: %q ended %s (%s), exit code %v; want exited with %d", tc.app, tc.line, in.State, in.Reason, in.ExitCode, tc.exit)
			}
			continue
		}
		proctest.WaitFor(t, 10*time.Second, tc.app+" runs "+tc.program, func() bool {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(in.PID) + "/cmdline")
			argv0, _, _ := strings.Cut(string(b), "\x00")
			return filepath.Base(argv0) == tc.program
		})
	}

	// A program that is not there: the ticket is released naming it.
	_, err := f.reg.SetProcType(f.ctx, registry.ProcType{App: "demo", Name: "missing", Command: "exec visor-no-such-program --port $PORT"})
	must(t, err)
	_, err = f.reg.Scale(f.ctx, "demo", "v1", "missing", 1)
	must(t, err)
	proctest.WaitFor(t, 30*time.Second, "missing program named in the ticket's reasons", func() bool {
		ts, err := f.reg.Tickets(f.ctx)
		must(t, err)
		for _, tk := range ts {
			if tk.App == "demo" && tk.Proc == "missing" && len(tk.Reasons) > 0 {
				if r := strings.Join(tk.Reasons, "; "); !strings.Contains(r, `"visor-no-such-program" not found in PATH`) {
					t.Fatalf("reasons %q do not name the missing program", r)
				}
				return true
			}
		}
		insts, _ := f.reg.AppInstances(f.ctx, "demo")
		for _, in := range insts {
			if in.Proc == "missing" && in.State == registry.InstanceFailed {
				if !strings.Contains(in.Reason, `"visor-no-such-program" not found in PATH`) {
					t.Fatalf("instance failed with %q, not naming the missing program", in.Reason)
				}
				return true
			}
		}
		return false
	})
}
