package fault

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

	"github.com/visorhq/visor/internal/proctest"
)

// janitorEnv starts the test binary as the janitor of run <value>: it waits
// for EOF on its stdin, then removes everything of the run (removeRun).
const janitorEnv = "VISOR_FAULT_JANITOR"

// janitorLimit bounds the janitor's work after EOF.
const janitorLimit = 60 * time.Second

// janitor is the run's janitor process, seen from the test. The test holds
// the only write end of the janitor's stdin; the janitor reads until EOF,
// which comes when the test closes it (teardown) or when the test process
// dies, however it dies (kill -9, a timeout panic, a crash): the kernel
// closes the pipe either way. The janitor runs in a session of its own
// with no parent-death signal, so it outlives the test; it is not in any
// of the run's namespaces, so it does not kill itself.
type janitor struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	done   chan error
}

// startJanitor starts the janitor of run tag.
func startJanitor(tag string) (*janitor, error) {
	j := &janitor{done: make(chan error, 1)}
	j.cmd = exec.Command(proctest.Binary())
	j.cmd.Env = append(os.Environ(), janitorEnv+"="+tag)
	j.cmd.Stderr = &j.stderr
	j.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var err error
	if j.stdin, err = j.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := j.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start janitor: %w", err)
	}
	go func() { j.done <- j.cmd.Wait() }() // finish receives it
	return j, nil
}

// finish closes the janitor's stdin and waits up to d for it to have
// removed the run and exited.
func (j *janitor) finish(d time.Duration) error {
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

// janitorMain is the janitor process: it returns its exit code.
func janitorMain(tag string) int {
	// Its stderr is a pipe to the test, which may be dead when it writes;
	// a write error is better than dying of SIGPIPE half-way.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), janitorLimit)
	defer cancel()
	if err := removeRun(ctx, tag); err != nil {
		fmt.Fprintln(os.Stderr, "janitor:", err)
		return 1
	}
	return 0
}
