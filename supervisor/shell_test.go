package supervisor

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/supervisor/restart"
)

// TestShellLines runs real shell lines (Spec.Shell) as instances: lines
// that are valid shell start and do what they say (issue 13 item 4: lines
// starting with until, :, case, !, source or exit ended "command not
// found"); a simple command runs with no shell left between the
// supervisor and the program; a program that is not there is refused at
// Start with an error naming it.
func TestShellLines(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	const keep = -1 // the instance keeps running
	for i, tc := range []struct {
		name, line string
		exit       int    // exit code, or keep
		out        string // what the line writes to ./out (substring)
		program    string // for keep: the instance's process is this program (no shell between)
		bash       bool   // needs bash
	}{
		{name: "until", line: "until true; do :; done; echo until-ok >out; exec sleep 600", exit: keep, out: "until-ok", program: "sleep"},
		{name: "colon", line: ": starting; echo colon-ok >out; exec sleep 600", exit: keep, out: "colon-ok", program: "sleep"},
		{name: "case", line: "case $PORT in 8080) echo case-ok >out;; *) echo case-bad >out;; esac; exec sleep 600", exit: keep, out: "case-ok", program: "sleep"},
		{name: "negation", line: "! false && echo neg-ok >out && exec sleep 600", exit: keep, out: "neg-ok", program: "sleep"},
		{name: "source", line: "source ./env.sh && echo $FROM_ENV >out && exec sleep 600", exit: keep, out: "sourced-ok", program: "sleep", bash: true},
		{name: "dot", line: ". ./env.sh; echo $FROM_ENV >out; exec sleep 600", exit: keep, out: "sourced-ok", program: "sleep"},
		{name: "cd", line: "cd sub && pwd >../out && exec sleep 600", exit: keep, out: "/sub", program: "sleep"},
		{name: "exit 1", line: "exit 1", exit: 1},
		{name: "exit 0", line: "exit 0", exit: 0},
		{name: "exit in list", line: "true && exit 7", exit: 7},
		{name: "export", line: "export A=export-ok && env >out", exit: 0, out: "A=export-ok"},
		{name: "direct", line: "sleep 600", exit: keep, program: "sleep"},
		{name: "exec direct", line: "exec sleep 600", exit: keep, program: "sleep"},
		{name: "comment", line: "sleep 600 # the long wait", exit: keep, program: "sleep"},
		{name: "quotes", line: `sh -c 'echo "$1" >out; exec sleep 600' x 'quoted ok'`, exit: keep, out: "quoted ok", program: "sleep"},
		{name: "env expansion", line: "exec sleep $PORT", exit: keep, program: "sleep"},
		{name: "env expansion without exec", line: "sleep ${PORT}", exit: keep, program: "sleep"},
		{name: "assignment", line: "A=assign-ok env >out", exit: 0, out: "A=assign-ok"},
		{name: "redirection", line: "env >out", exit: 0, out: "PORT=8080"},
		{name: "pipe", line: "echo pipe-ok | tee out >/dev/null", exit: 0, out: "pipe-ok"},
		{name: "and", line: `test -n "$PORT" && echo and-ok >out`, exit: 0, out: "and-ok"},
		{name: "heredoc", line: "cat >out <<EOF\nheredoc $PORT\nEOF", exit: 0, out: "heredoc 8080"},
		{name: "script failing program", line: "true && visor-no-such-program", exit: 127},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.bash {
				if _, err := exec.LookPath("bash"); err != nil {
					t.Skip("no bash on this host: a line with source cannot run")
				}
			}
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "env.sh"), []byte("FROM_ENV=sourced-ok\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			id := "line-" + strconv.Itoa(i)
			spec := Spec{ID: id, Shell: tc.line, Dir: dir, Env: []string{"PATH=" + DefaultPath, "PORT=8080"},
				Restart: restart.Policy{Mode: restart.ModeNever}}
			st, err := h.Start(ctxT(t), spec)
			if err != nil {
				t.Fatalf("Start(%q) = %v", tc.line, err)
			}
			if tc.exit != keep {
				final, err := h.Wait(ctxT(t), id)
				if err != nil {
					t.Fatal(err)
				}
				if final.State != StateExited || final.ExitCode != tc.exit {
					t.Fatalf("%q ended %s with exit code %d (%s), want exited with %d", tc.line, final.State, final.ExitCode, final.Reason, tc.exit)
				}
			}
			if tc.out != "" {
				var b []byte
				proctest.WaitFor(t, 10*time.Second, "output of "+tc.line, func() bool {
					b, _ = os.ReadFile(filepath.Join(dir, "out"))
					return strings.Contains(string(b), tc.out)
				})
			}
			if tc.program != "" {
				var argv0 string
				proctest.WaitFor(t, 10*time.Second, tc.program+" as the instance's process", func() bool {
					b, _ := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/cmdline")
					argv0, _, _ = strings.Cut(string(b), "\x00")
					return filepath.Base(argv0) == tc.program
				})
			}
			if tc.exit == keep {
				if cur, _ := h.Status(id); cur.State != StateRunning || cur.PID != st.PID {
					t.Fatalf("%q: %s (pid %d, was %d), want still running", tc.line, cur.State, cur.PID, st.PID)
				}
			}
		})
	}
}

// TestShellLineRefused: a line whose program is not there, or that does
// not parse, is refused by Start with an error naming the problem, and
// nothing is left behind.
func TestShellLineRefused(t *testing.T) {
	t.Parallel()
	h := start(t, Config{})
	for _, tc := range []struct {
		name, line, want string
	}{
		{"missing program", "visor-no-such-program --flag", `"visor-no-such-program" not found in PATH`},
		{"missing program with expansion", "exec visor-no-such-program $PORT", `"visor-no-such-program" not found in PATH`},
		{"missing relative program", "./missing web", "missing"},
		{"unterminated quote", "echo 'oops", "closing quote"},
		{"only a comment", "# nothing", "empty command line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Start(ctxT(t), Spec{ID: "refused", Shell: tc.line, Dir: t.TempDir(), Env: []string{"PATH=" + DefaultPath}})
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start(%q) = %v, want ErrInvalidSpec naming %q", tc.line, err, tc.want)
			}
		})
	}
	if l := h.List(); len(l) != 0 {
		t.Fatalf("instances left behind: %+v", l)
	}
}
