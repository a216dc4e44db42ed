package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"syscall"
	"time"
)

// healthLoop probes the process of generation gen until ctx ends: first
// after a short delay, then every Period.
func (s *Supervisor) healthLoop(ctx context.Context, in *instance, gen uint64, h HealthCheck, run runAs) {
	t := time.NewTimer(min(h.Period, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := probe(ctx, h, run)
		if ctx.Err() != nil {
			return
		}
		s.healthResult(in, gen, h, err)
		t.Reset(h.Period)
	}
}

// runAs is what an exec check inherits from its instance: environment,
// working directory and credentials.
type runAs struct {
	env  []string
	dir  string
	cred *syscall.Credential // nil: the supervisor's own
}

// probe runs one health check; nil means it passed. An exec check runs
// as the instance's user, group and supplementary groups (run.cred), never
// as the supervisor: the instance may rewrite the script it names (issue
// 14, row 1).
func probe(ctx context.Context, h HealthCheck, run runAs) error {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	switch h.Type {
	case "exec":
		// The check is a process group of its own, killed whole at the
		// timeout (not only its first process: a shell's children would
		// outlive it) and once it has exited (what it left in the
		// background). Its pid, so the group id, is not reused while
		// members remain.
		cmd := exec.CommandContext(ctx, h.Command[0], h.Command[1:]...)
		cmd.Env, cmd.Dir = run.env, run.dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: run.cred}
		cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = time.Second
		err := cmd.Run()
		if cmd.Process != nil {
			_ = killGroup(cmd.Process.Pid, syscall.SIGKILL)
		}
		if err != nil {
			return fmt.Errorf("exec check: %w", err)
		}
		return nil
	case "tcp":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", h.Address)
		if err != nil {
			return fmt.Errorf("tcp check: %w", err)
		}
		return c.Close()
	case "http":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
		if err != nil {
			return fmt.Errorf("http check: %w", err)
		}
		resp, err := healthTransport.RoundTrip(req)
		if err != nil {
			return fmt.Errorf("http check: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("http check: %w: status %d", errHealthStatus, resp.StatusCode)
		}
		return nil
	}
	return fmt.Errorf("health: unknown type %q", h.Type)
}

var errHealthStatus = errors.New("unhealthy status")

// healthTransport keeps no idle connections between probes.
var healthTransport = &http.Transport{DisableKeepAlives: true}

// healthResult applies one probe result to the instance: a pass may meet
// the started criterion; FailureThreshold consecutive failures of a running
// instance kill it for a restart with reason "health".
func (s *Supervisor) healthResult(in *instance, gen uint64, h HealthCheck, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.gen != gen || in.handle < 0 {
		return
	}
	if err == nil {
		in.fails, in.healthy = 0, true
		s.maybeRunningLocked(in)
		return
	}
	in.fails++
	in.log.Debug("health check failed", "failures", in.fails, "error", err)
	if in.state == StateRunning && in.fails >= h.FailureThreshold && !in.healthKill {
		in.log.Warn("health check failing, restarting", "failures", in.fails, "error", err)
		in.healthKill = true
		s.killLocked(in)
	}
}
