package supervisor

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/visorhq/visor/supervisor/restart"
)

// handleExit runs on the reaper goroutine when a watched process exits.
func (s *Supervisor) handleExit(w watch) {
	in := w.in
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.gen != w.gen || in.handle != w.fd {
		s.reaper.release(w.fd)
		return
	}
	pid := in.pid
	// The leader is a zombie until reaped, so its pid (the group id) cannot
	// be reused yet: kill what is left of the group first, then reap. An
	// instance is its whole group, as systemd's KillMode=control-group.
	_ = in.killGroupLocked(syscall.SIGKILL)
	if in.group != nil {
		if err := in.group.Kill(); err != nil {
			in.log.Warn("kill cgroup", "error", err)
		}
	}
	st := reapHandle(w.fd, pid)
	s.reaper.release(w.fd)
	in.pid, in.handle = 0, -1
	s.stopTimer(&in.upTimer)
	s.stopTimer(&in.killTimer)
	if in.healthCancel != nil {
		in.healthCancel()
		in.healthCancel = nil
	}
	oom := false
	if in.group != nil {
		if n, err := in.group.OOMKills(); err == nil && n > in.oomBase {
			oom = true
		}
	}
	in.exitCode, in.signal = st.code, ""
	switch {
	case st.unknown:
		in.phase = PhaseUnknown
	case st.signaled:
		in.phase, in.signal = PhaseSignaled, signalName(st.signal)
	default:
		in.phase = PhaseExited
	}
	exit := restart.Exit{Code: st.code, Signaled: st.signaled, OOM: oom, Health: in.healthKill, Unknown: st.unknown}
	in.log.Info("process exited", "pid", pid, "exit_code", st.code, "signal", in.signal, "oom", oom, "unknown", st.unknown)
	s.afterExitLocked(in, exit, exitReason(exit, in.signal))
}

// exitReason describes an exit for Status.Reason.
func exitReason(e restart.Exit, signal string) string {
	switch {
	case e.OOM:
		return "oom"
	case e.Health:
		return "health"
	case e.Unknown:
		return "exit status unknown"
	case e.Signaled:
		return "signal " + signal
	default:
		return fmt.Sprintf("exit code %d", e.Code)
	}
}

// afterExitLocked applies the stop request or the restart policy after the
// process is gone.
func (s *Supervisor) afterExitLocked(in *instance, exit restart.Exit, reason string) {
	if in.state == StateStopping {
		s.transitionLocked(in, StateExited, "stopped")
		return
	}
	d := in.tracker.Next(exit, in.startTime, s.now())
	switch {
	case d.Restart:
		in.restarts[d.Reason]++
		in.backoff = d.Delay
		if s.transitionLocked(in, StateBackoff, reason) == nil && !in.held {
			s.scheduleRestartLocked(in, d.Delay)
		}
	case d.Failed:
		s.transitionLocked(in, StateFailed, "restart limit reached: "+reason)
	default:
		s.transitionLocked(in, StateExited, reason)
	}
}

// scheduleRestartLocked starts the instance again after delay, unless it
// left backoff meanwhile.
func (s *Supervisor) scheduleRestartLocked(in *instance, delay time.Duration) {
	gen := in.gen
	in.log.Debug("restart scheduled", "delay", delay)
	s.stopTimer(&in.backoffTimer)
	in.backoffTimer = s.afterFunc(delay, func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		if in.gen != gen || in.state != StateBackoff {
			return
		}
		in.backoffTimer = nil
		if err := s.spawnLocked(in); err != nil {
			if errors.Is(err, ErrStopped) {
				return // shutting down: still in backoff, Restore schedules it again
			}
			in.log.Error("restart failed", "error", err)
			s.transitionLocked(in, StateFailed, "restart failed: "+err.Error())
		}
	})
}
