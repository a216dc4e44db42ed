package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/logfile"
	"github.com/visorhq/visor/supervisor/restart"
)

// instance is one supervised Spec and its current process.
type instance struct {
	id   string
	spec Spec
	rs   resolved
	log  hclog.Logger

	mu         sync.Mutex // guards every field below
	held       bool       // restart held by Restore until Resume (Config.HoldRestored)
	state      State
	since      time.Time
	reason     string
	phase      Phase
	gen        uint64 // incremented at every spawn or adoption
	pid        int    // 0 without a live process
	handle     int    // watch handle (pidfd on Linux, pid on darwin); -1 without a live process
	startTicks uint64
	startTime  time.Time
	adopted    bool
	exitCode   int
	signal     string
	restarts   map[string]int
	tracker    *restart.Tracker
	group      *cgroup.Group // nil without cgroups
	oomBase    uint64        // OOM kills of group before this process
	upOK       bool          // MinUptime reached
	healthy    bool          // a health check passed for this process
	fails      int           // consecutive health check failures
	healthKill bool          // the process is being killed for failing health checks
	continued  bool          // SIGCONT sent since the last stop signal
	backoff    time.Duration // delay of the pending restart
	restarting bool          // in Restart's stop phase (Status.Restarting)

	upTimer      *time.Timer
	killTimer    *time.Timer
	backoffTimer *time.Timer
	healthCancel context.CancelFunc
	changed      chan struct{} // closed and replaced at every transition
}

// statusLocked returns a snapshot without CPU and RSS.
func (in *instance) statusLocked() Status {
	st := Status{
		ID:        in.id,
		State:     in.state,
		Phase:     in.phase,
		PID:       in.pid,
		StartTime: in.startTime,
		Since:     in.since,
		Restarts:  maps.Clone(in.restarts),
		ExitCode:  in.exitCode,
		Signal:    in.signal,
		Reason:    in.reason,
		Adopted:   in.adopted,
		Meta:      maps.Clone(in.spec.Meta),
	}
	if in.restarting && (in.state == StateStopping || in.state == StateExited) {
		st.Restarting = true
	}
	if in.state == StateBackoff {
		st.Backoff = in.backoff
		st.Held = in.held
	}
	return st
}

// recordLocked returns the persisted form of the instance.
func (in *instance) recordLocked() *record {
	return &record{
		Version:    recordVersion,
		Spec:       in.spec,
		State:      in.state,
		Since:      in.since,
		Phase:      in.phase,
		PID:        in.pid,
		StartTicks: in.startTicks,
		StartTime:  in.startTime,
		Restarts:   in.restarts,
		ExitCode:   in.exitCode,
		Signal:     in.signal,
		Reason:     in.reason,
	}
}

// killGroupLocked sends sig to the instance's process group. Our own
// child's pid cannot be reused before we reap it, but an adopted process is
// reaped by init, at once: the group is signalled while the leader is still
// the process we adopted (alive or zombie), and also once the leader is gone
// (its /proc entry missing), since the kernel frees a pid only when no
// process uses it as pid, group or session id: while members of our group
// remain, the group id cannot name a new process, and once none remain the
// signal finds nobody (ESRCH). Only a leader's pid held by a process of
// another start time (reused) is left alone. (The one gap: the group empties
// and the pid is reused by a new group leader in the moment between the
// check and the kill.)
func (in *instance) killGroupLocked(sig syscall.Signal) error {
	if in.pid <= 0 {
		return nil
	}
	if in.adopted {
		ticks, _, err := procStat(in.pid)
		switch {
		case err == nil && ticks == in.startTicks:
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH):
			// Leader reaped by its parent; what is left is our group.
		default:
			return nil
		}
	}
	return killGroup(in.pid, sig)
}

// quiesceLocked stops the instance's timers and health check for shutdown;
// the process keeps running.
func (in *instance) quiesceLocked(s *Supervisor) {
	s.stopTimer(&in.upTimer)
	s.stopTimer(&in.killTimer)
	s.stopTimer(&in.backoffTimer)
	if in.healthCancel != nil {
		in.healthCancel()
		in.healthCancel = nil
	}
}

// transitionLocked moves the instance to state to, persists it, wakes
// waiters and notifies the handler. An illegal move is a programming error:
// it is logged and returned, and nothing changes.
func (s *Supervisor) transitionLocked(in *instance, to State, reason string) error {
	return s.moveLocked(in, to, reason, true)
}

// moveLocked is transitionLocked; persist false skips the state record when a
// second transition follows at once (starting then running).
func (s *Supervisor) moveLocked(in *instance, to State, reason string, persist bool) error {
	if err := checkTransition(in.state, to); err != nil {
		in.log.Error("state machine", "error", err)
		return err
	}
	from := in.state
	in.state, in.since, in.reason = to, time.Now(), reason
	in.log.Info("instance state changed", "from", string(from), "to", string(to), "reason", reason, "pid", in.pid)
	if persist {
		if err := s.save(in.recordLocked()); err != nil {
			in.log.Warn("persist state", "error", err)
		}
	}
	close(in.changed)
	in.changed = make(chan struct{})
	if s.notes != nil {
		s.notes.push(in.statusLocked())
	}
	return nil
}

// spawnLocked starts a new process for the instance and moves it to
// starting (or running when it has no started criterion). Once Run is
// shutting down it forks nothing and returns ErrStopped; a spawn begun
// before holds Run's shutdown until its process is watched and recorded.
func (s *Supervisor) spawnLocked(in *instance) error {
	if !s.track() {
		return ErrStopped
	}
	defer s.wg.Done()
	in.restarting = false
	if s.cg != nil && in.group == nil {
		g, err := s.cg.Create(in.id, in.spec.Limits)
		if err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
		in.group = g
	}
	in.oomBase = 0
	if in.group != nil {
		if n, err := in.group.OOMKills(); err == nil {
			in.oomBase = n
		}
	}
	stdout, err := logfile.OpenAppend(s.LogPath(in.id, "stdout"))
	if err != nil {
		return fmt.Errorf("open stdout log: %w", err)
	}
	defer stdout.Close()
	stderr, err := logfile.OpenAppend(s.LogPath(in.id, "stderr"))
	if err != nil {
		return fmt.Errorf("open stderr log: %w", err)
	}
	defer stderr.Close()
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer devNull.Close()

	sys := &syscall.SysProcAttr{Setpgid: true, Credential: in.rs.cred}
	handleOf := prepareHandle(sys)
	var after func(int) error
	if in.group != nil {
		if after, err = in.group.Prepare(sys); err != nil {
			return fmt.Errorf("prepare cgroup: %w", err)
		}
	}
	attr := &syscall.ProcAttr{
		Dir:   in.rs.dir,
		Env:   in.rs.env,
		Files: []uintptr{devNull.Fd(), stdout.Fd(), stderr.Fd()},
		Sys:   sys,
	}
	pid, err := syscall.ForkExec(in.rs.path, in.rs.argv, attr)
	if err != nil {
		if after != nil {
			_ = after(-1) // releases what Prepare opened
		}
		switch {
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOENT),
			errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EPERM):
			// The spec cannot run here (permissions of the run-as user, a bad
			// interpreter line, a binary removed since validation).
			return fmt.Errorf("%w: start %s: %w", ErrInvalidSpec, in.rs.path, err)
		}
		return fmt.Errorf("start %s: %w", in.rs.path, err)
	}
	if after != nil {
		if err := after(pid); err != nil {
			in.log.Warn("join cgroup", "pid", pid, "error", err)
		}
	}
	handle, err := handleOf(pid)
	if err != nil {
		// Unwatchable: undo the start rather than run it blind.
		_ = killGroup(pid, syscall.SIGKILL)
		reapBlocking(-1, pid)
		return fmt.Errorf("watch %s: %w", in.rs.path, err)
	}
	ticks, _, err := procStat(pid)
	if err != nil {
		in.log.Warn("read process start time", "pid", pid, "error", err)
	}
	in.gen++
	in.pid, in.handle, in.startTicks, in.adopted = pid, handle, ticks, false
	// time.Now, not ticksTime: the boot time in /proc/stat has a one-second
	// resolution, too coarse for MinUptime and ResetAfter, and Now carries
	// a monotonic reading.
	in.startTime = time.Now()
	in.phase, in.continued = PhaseRunning, false
	in.upOK, in.healthy, in.fails, in.healthKill = in.spec.MinUptime == 0, false, 0, false
	if err := s.reaper.add(watch{in: in, gen: in.gen, fd: handle}); err != nil {
		// Without a watch nobody would notice the exit: undo the start.
		_ = killGroup(pid, syscall.SIGKILL)
		reapBlocking(handle, pid)
		closeHandle(handle)
		in.pid, in.handle = 0, -1
		return err
	}
	// Without a started criterion running follows at once: one state record
	// write for both.
	s.moveLocked(in, StateStarting, "", !in.upOK || in.rs.health != nil)
	in.log.Debug("process started", "pid", pid, "path", in.rs.path)
	s.armStartedLocked(in)
	return nil
}

// armStartedLocked arms the started criterion (MinUptime, health check) of
// the current process and moves to running when it is already met.
func (s *Supervisor) armStartedLocked(in *instance) {
	gen := in.gen
	if in.rs.health != nil && s.runCtx != nil && s.track() {
		ctx, cancel := context.WithCancel(s.runCtx)
		in.healthCancel = cancel
		h, p := *in.rs.health, in.rs.prober
		go func() {
			defer s.wg.Done()
			s.healthLoop(ctx, in, gen, h, p)
		}()
	}
	if !in.upOK {
		wait := in.spec.MinUptime - time.Since(in.startTime)
		if wait <= 0 {
			in.upOK = true
		} else {
			in.upTimer = s.afterFunc(wait, func() {
				in.mu.Lock()
				defer in.mu.Unlock()
				if in.gen != gen || in.handle < 0 {
					return
				}
				in.upTimer = nil
				in.upOK = true
				s.maybeRunningLocked(in)
			})
		}
	}
	s.maybeRunningLocked(in)
}

// maybeRunningLocked moves a starting instance to running once its started
// criterion is met.
func (s *Supervisor) maybeRunningLocked(in *instance) {
	if in.state == StateStarting && in.upOK && (in.rs.health == nil || in.healthy) {
		s.transitionLocked(in, StateRunning, "")
	}
}

// killLocked sends the stop signal to the group, then SIGKILL to the group
// and its cgroup after the grace period if the process is still there.
func (s *Supervisor) killLocked(in *instance) {
	if in.handle < 0 {
		return
	}
	pid, gen := in.pid, in.gen
	if err := in.killGroupLocked(in.rs.stopSignal); err != nil {
		in.log.Warn("send stop signal", "pid", pid, "error", err)
	}
	if in.rs.stopSignal != syscall.SIGKILL {
		// A stopped process would not act on the stop signal before SIGKILL.
		_ = in.killGroupLocked(syscall.SIGCONT)
	}
	s.stopTimer(&in.killTimer)
	in.killTimer = s.afterFunc(in.rs.stopTimeout, func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		if in.gen != gen || in.handle < 0 {
			return
		}
		in.killTimer = nil
		in.log.Warn("stop timeout, killing process group", "pid", pid, "timeout", in.rs.stopTimeout)
		_ = in.killGroupLocked(syscall.SIGKILL)
		if in.group != nil {
			if err := in.group.Kill(); err != nil {
				in.log.Warn("kill cgroup", "error", err)
			}
		}
	})
}

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
	d := in.tracker.Next(exit, in.startTime, time.Now())
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
