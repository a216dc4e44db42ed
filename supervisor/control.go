package supervisor

import (
	"context"
	"fmt"
	"syscall"

	"github.com/visorhq/visor/supervisor/restart"
)

// Start validates spec and starts its process. Validation errors (missing or
// non-executable binary, unknown user or group, missing dir, unknown signal,
// negative durations, ...) wrap ErrInvalidSpec and leave no process behind.
// An instance with the same id must not exist or be terminal (it is then
// replaced); otherwise the error wraps ErrExists. Start returns once the
// process is forked (state starting or running); it blocks until Run is
// running.
func (s *Supervisor) Start(ctx context.Context, spec Spec) (Status, error) {
	if err := s.awaitRun(ctx); err != nil {
		return Status{}, err
	}
	rs, err := validate(spec)
	if err != nil {
		return Status{}, err
	}
	if s.cfg.RefuseRoot && rs.runsAsRoot() {
		who := "no user is set and the supervisor runs as root"
		if spec.User != "" {
			who = fmt.Sprintf("user %q has uid 0", spec.User)
		}
		return Status{}, rootError(who)
	}
	in := s.newInstance(spec, rs)
	s.mu.Lock()
	old, ok := s.instances[spec.ID]
	if ok {
		old.mu.Lock()
		terminal := old.state.Terminal()
		old.mu.Unlock()
		if !terminal {
			s.mu.Unlock()
			return Status{}, fmt.Errorf("%w: %q", ErrExists, spec.ID)
		}
		in.group = old.group
	}
	// Locked before it is published: a Stop (or Restart) that finds it
	// waits for the spawn instead of seeing no state yet and dropping its
	// request.
	in.mu.Lock()
	s.instances[spec.ID] = in
	s.mu.Unlock()
	if s.cg == nil && !spec.Limits.IsZero() {
		in.log.Warn("limits not enforced: no usable cgroup controller")
	}
	s.addLogs(in)
	err = s.spawnLocked(in)
	st := in.statusLocked()
	in.mu.Unlock()
	if err != nil {
		s.mu.Lock()
		if s.instances[spec.ID] == in {
			delete(s.instances, spec.ID)
		}
		s.mu.Unlock()
		// Wake a Stop or Wait that found it meanwhile: it is gone.
		in.mu.Lock()
		close(in.changed)
		in.changed = make(chan struct{})
		in.mu.Unlock()
		s.forget(in)
		return Status{}, err
	}
	return st, nil
}

func (s *Supervisor) addLogs(in *instance) {
	s.rot.Add(s.LogPath(in.id, "stdout"), in.spec.Logs)
	s.rot.Add(s.LogPath(in.id, "stderr"), in.spec.Logs)
}

// forget drops the state record, cgroup and log rotation of a removed instance.
func (s *Supervisor) forget(in *instance) {
	if err := s.removeState(in.id); err != nil {
		s.log.Warn("remove state record", "instance", in.id, "error", err)
	}
	if in.group != nil {
		if err := in.group.Remove(); err != nil {
			s.log.Warn("remove cgroup", "instance", in.id, "error", err)
		}
	}
	s.rot.Remove(s.LogPath(in.id, "stdout"))
	s.rot.Remove(s.LogPath(in.id, "stderr"))
}

// Stop sends the stop signal to the instance's process group, waits
// StopTimeout, then SIGKILLs the group (and its cgroup); the instance is not
// restarted. It returns the final status once the instance is exited, or
// the current status and ctx's error when ctx ends first (the stop goes on).
// Stopping a terminal instance returns its status.
func (s *Supervisor) Stop(ctx context.Context, id string) (Status, error) {
	return s.stop(ctx, id, false)
}

// stop is Stop; forRestart marks the stop phase of Restart (the statuses
// it produces have Restarting set).
func (s *Supervisor) stop(ctx context.Context, id string, forRestart bool) (Status, error) {
	if err := s.awaitRun(ctx); err != nil {
		return Status{}, err
	}
	in, err := s.lookup(id)
	if err != nil {
		return Status{}, err
	}
	in.mu.Lock()
	if !in.state.Terminal() {
		in.restarting = forRestart
	}
	switch in.state {
	case StateBackoff:
		s.stopTimer(&in.backoffTimer)
		s.transitionLocked(in, StateExited, "stopped")
	case StateStarting, StateRunning:
		s.transitionLocked(in, StateStopping, "stop requested")
		s.killLocked(in)
	}
	in.mu.Unlock()
	return s.Wait(ctx, id)
}

// Resume ends the hold Restore put on an instance (Config.HoldRestored):
// a restart waiting in backoff goes ahead with the delay its restart policy
// chose, and later exits restart as usual. It is a no-op for an instance
// that is not held.
func (s *Supervisor) Resume(id string) error {
	in, err := s.lookup(id)
	if err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.held {
		return nil
	}
	in.held = false
	if in.state == StateBackoff {
		in.log.Info("held restart resumed", "delay", in.backoff)
		s.scheduleRestartLocked(in, in.backoff)
	}
	return nil
}

// Restart stops the instance (as Stop) and starts it again with the same
// spec, counting a "manual" restart and resetting its backoff.
func (s *Supervisor) Restart(ctx context.Context, id string) (Status, error) {
	if _, err := s.stop(ctx, id, true); err != nil {
		// ctx ended before the process did: no start follows, so the stop
		// is a stop after all.
		if in, lerr := s.lookup(id); lerr == nil {
			in.mu.Lock()
			s.abandonRestartLocked(in, "")
			in.mu.Unlock()
		}
		return Status{}, err
	}
	// Lock the instance while holding s.mu, so that a concurrent Start
	// cannot replace it between the lookup and the spawn.
	s.mu.Lock()
	in, ok := s.instances[id]
	if !ok {
		s.mu.Unlock()
		return Status{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	in.mu.Lock()
	s.mu.Unlock()
	defer in.mu.Unlock()
	if !in.state.Terminal() {
		// Someone started it again meanwhile.
		return in.statusLocked(), nil
	}
	in.restarts[restart.ReasonManual]++
	in.tracker.Reset()
	if err := s.spawnLocked(in); err != nil {
		in.restarts[restart.ReasonManual]--
		s.abandonRestartLocked(in, "restart failed: "+err.Error())
		return in.statusLocked(), err
	}
	return in.statusLocked(), nil
}

// abandonRestartLocked ends Restart's stop phase without a start: the
// handler, which may have skipped the phase's states as part of a restart,
// is told the current state again, unmarked. A non-empty reason replaces
// the state's reason.
func (s *Supervisor) abandonRestartLocked(in *instance, reason string) {
	if !in.restarting {
		return
	}
	in.restarting = false
	if reason != "" {
		in.reason = reason
	}
	if s.notes != nil {
		s.notes.push(in.statusLocked())
	}
}

// Signal sends the named signal ("HUP", "SIGUSR1", ...) to the instance's
// process group. An unknown name wraps ErrInvalidSpec; an instance without a
// live process gives ErrNotRunning.
func (s *Supervisor) Signal(id, sig string) error {
	signal, err := ParseSignal(sig)
	if err != nil {
		return err
	}
	select {
	case <-s.doneCh:
		return ErrStopped
	default:
	}
	in, err := s.lookup(id)
	if err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.handle < 0 {
		return fmt.Errorf("%w: %q", ErrNotRunning, id)
	}
	if err := in.killGroupLocked(signal); err != nil {
		return fmt.Errorf("signal %s to %q: %w", signalName(signal), id, err)
	}
	switch signal {
	case syscall.SIGCONT:
		in.continued = true
	case syscall.SIGSTOP, syscall.SIGTSTP:
		in.continued = false
	}
	in.log.Info("signal sent", "signal", signalName(signal), "pid", in.pid)
	return nil
}

// Remove forgets a terminal instance: its state record and cgroup are deleted,
// its logs stay. A live instance gives ErrActive.
func (s *Supervisor) Remove(id string) error {
	s.mu.Lock()
	in, ok := s.instances[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	in.mu.Lock()
	terminal := in.state.Terminal()
	in.mu.Unlock()
	if !terminal {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrActive, id)
	}
	delete(s.instances, id)
	s.mu.Unlock()
	s.forget(in)
	return nil
}
