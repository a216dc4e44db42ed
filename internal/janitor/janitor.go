package janitor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Janitor is a started janitor process, seen from the harness.
type Janitor struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	done   chan error
}

// Start starts binary (the test binary) as the janitor of run tag: the
// child finds tag in its environment variable env and must call Main from
// TestMain.
func Start(binary, env, tag string) (*Janitor, error) {
	j := &Janitor{done: make(chan error, 1)}
	j.cmd = exec.Command(binary)
	j.cmd.Env = append(os.Environ(), env+"="+tag)
	j.cmd.Stderr = &j.stderr
	j.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var err error
	if j.stdin, err = j.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := j.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start janitor: %w", err)
	}
	go func() { j.done <- j.cmd.Wait() }() // Finish receives it
	return j, nil
}

// Finish closes the janitor's stdin and waits up to d for it to have
// removed the run and exited; past d it kills the janitor and says so.
func (j *Janitor) Finish(d time.Duration) error {
	_ = j.stdin.Close()
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case err := <-j.done:
		if err != nil {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(j.stderr.String()))
		}
		return nil
	case <-tm.C:
		_ = j.cmd.Process.Kill()
		<-j.done
		return fmt.Errorf("did not finish within %s: %s", d, strings.TrimSpace(j.stderr.String()))
	}
}

// Main is the janitor process: it waits for EOF on stdin, then calls
// remove for the run with at most limit, and returns the exit code.
func Main(tag string, limit time.Duration, remove func(ctx context.Context, tag string) error) int {
	// Its stderr is a pipe to the harness, which may be dead when it
	// writes; a write error is better than dying of SIGPIPE half-way.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	if err := remove(ctx, tag); err != nil {
		fmt.Fprintln(os.Stderr, "janitor:", err)
		return 1
	}
	return 0
}
