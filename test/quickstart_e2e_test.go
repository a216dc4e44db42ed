package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// quickstartLines returns the command lines of the README's quickstart:
// the first ```sh block after "in a second shell".
func quickstartLines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	must(t, err)
	s := string(b)
	i := strings.Index(s, "in a second shell")
	if i < 0 {
		t.Fatal(`README.md: no "in a second shell" quickstart`)
	}
	s = s[i:]
	start := strings.Index(s, "```sh\n")
	if start < 0 {
		t.Fatal("README.md: no ```sh block after the quickstart's introduction")
	}
	s = s[start+len("```sh\n"):]
	s = s[:strings.Index(s, "```")]
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestQuickstart (issue 17, item 5) runs the README's quickstart, line by
// line, through sh in a directory whose bin/visor is the built binary,
// against a dev agent: with nothing but the binary (the workload is
// `visor demo-web`; python's http.server needed python3), every line
// succeeds, and `logs INSTANCE -f` shows a stderr line (the workload's
// request log, fed by its health check) labelled, besides its stdout.
// INSTANCE is an instance that `ps demo -o json` lists.
func TestQuickstart(t *testing.T) {
	bin := e2etest.VisorBinary(t)
	c := &cluster{t: t, runID: fmt.Sprint(time.Now().UnixNano())}
	t.Cleanup(c.killWorkloads)
	runID := c.runID
	d := startDev(t, bin, t.TempDir())
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(t, os.Symlink(bin, filepath.Join(dir, "bin", "visor")))
	shell := func(ctx context.Context, line string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "sh", "-c", line)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "VISOR_ENDPOINTS="+d.ep, "PWD="+dir)
		return cmd
	}
	instance := ""
	for _, line := range quickstartLines(t) {
		if strings.Contains(line, "INSTANCE") {
			if instance == "" {
				instance = firstInstance(t, d)
			}
			line = strings.ReplaceAll(line, "INSTANCE", instance)
		}
		if strings.Contains(line, " logs ") && strings.Contains(line, " -f") {
			followLogs(t, shell, line)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(2*time.Minute))
		out, err := shell(ctx, line).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("quickstart line %q: %v\n%s", line, err, out)
		}
		t.Logf("$ %s\n%s", line, out)
		if strings.Contains(line, "app create") {
			// Tag the instances so that the test's cleanup finds them.
			if out, err := d.visor("env", "set", "demo", "VISOR_E2E="+runID); err != nil {
				t.Fatalf("env set: %v\n%s", err, out)
			}
		}
	}
	if instance == "" {
		t.Fatal("the quickstart names no INSTANCE")
	}
	if left := c.workloads(); len(left) != 0 {
		t.Fatalf("after the quickstart's app delete, workloads left: %v", left)
	}
	d.interrupt(t)
}

// firstInstance is the id of a running instance of app demo.
func firstInstance(t *testing.T, d *devAgent) string {
	t.Helper()
	out, err := d.visor("ps", "demo", "-o", "json")
	if err != nil {
		t.Fatalf("ps demo: %v\n%s", err, out)
	}
	var rows []struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	must(t, json.Unmarshal([]byte(out), &rows))
	for _, r := range rows {
		if r.State == "running" {
			return r.ID
		}
	}
	t.Fatalf("no running instance of demo:\n%s", out)
	return ""
}

// followLogs runs a `logs -f` line until its output holds a labelled
// stderr line and the workload's labelled stdout line, then interrupts it
// as Ctrl-C would; it must exit 0.
func followLogs(t *testing.T, shell func(context.Context, string) *exec.Cmd, line string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(2*time.Minute))
	defer cancel()
	out := &syncBuf{}
	cmd := shell(ctx, "exec "+line)
	cmd.Stdout, cmd.Stderr = out, out
	must(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	proctest.WaitFor(t, time.Minute, "logs -f to show a stderr line and the stdout line", func() bool {
		s := out.String()
		return strings.Contains(s, "stderr | ") && strings.Contains(s, "GET /") && strings.Contains(s, "stdout | demo-web: serving")
	})
	must(t, cmd.Process.Signal(syscall.SIGINT))
	if err := <-done; err != nil {
		t.Fatalf("%s: after SIGINT: %v\n%s", line, err, out.String())
	}
	t.Logf("$ %s\n%s", line, out.String())
}

// syncBuf is a bytes.Buffer safe for a process's writes and a test's reads.
type syncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
