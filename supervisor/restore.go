package supervisor

import (
	"context"
	"syscall"
	"time"

	"github.com/visorhq/visor/supervisor/restart"
)

// Restore re-adopts the instances persisted in StateDir, typically by a new
// supervisor after the previous one's process died or was upgraded. A
// process is adopted only if its pid is alive with the persisted start time
// (/proc/<pid>/stat field 22), so a reused pid is never mistaken for ours;
// it is then watched (a pidfd on Linux, kqueue on darwin) and never started a second time. A
// process that ended meanwhile is reported with ExitCode -1 and
// PhaseUnknown (unless it is still our unreaped child), and its restart
// policy applies. Instances already known are skipped. An adopted instance
// keeps its persisted state, so the StateHandler hears of it only at its
// next change: the returned statuses are the starting point. Restore blocks until
// Run is running and returns the status of every restored instance. When Run
// begins shutting down meanwhile, Restore stops with ErrStopped and the
// statuses restored so far; the records not reached are left for the next
// Restore.
func (s *Supervisor) Restore(ctx context.Context) ([]Status, error) {
	if err := s.awaitRun(ctx); err != nil {
		return nil, err
	}
	recs, err := s.loadAll()
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, rec := range recs {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		// Registered with Run like a spawn: none begins once Run is
		// shutting down, and Run closes the reaper only after this one's
		// watch is in place.
		if !s.track() {
			return out, ErrStopped
		}
		in, ok := s.restoreOne(rec)
		s.wg.Done()
		if !ok {
			continue
		}
		in.mu.Lock()
		out = append(out, in.statusLocked())
		in.mu.Unlock()
	}
	return out, nil
}

// restoreOne rebuilds one instance from rec; false when it is known already.
func (s *Supervisor) restoreOne(rec record) (*instance, bool) {
	if sig, err := ParseSignal(rec.Spec.StopSignal); err == nil && checkStopSignal(sig) != nil {
		// Persisted before such stop signals were refused: stop with the
		// default rather than fail the instance's restarts.
		s.log.Warn("restored stop signal refused, using TERM", "instance", rec.Spec.ID, "stop_signal", rec.Spec.StopSignal)
		rec.Spec.StopSignal = ""
	}
	rs, err := validate(rec.Spec)
	if err != nil {
		// The spec was valid when started (binary since removed, user
		// deleted...): adopt what runs, a restart will fail visibly.
		s.log.Warn("restored spec no longer valid", "instance", rec.Spec.ID, "error", err)
		rs = fallbackResolved(rec.Spec)
	}
	in := s.newInstance(rec.Spec, rs)
	in.state, in.since, in.reason, in.phase = rec.State, rec.Since, rec.Reason, rec.Phase
	in.exitCode, in.signal, in.startTime = rec.ExitCode, rec.Signal, rec.StartTime
	for k, v := range rec.Restarts {
		in.restarts[k] = v
	}
	if s.cg != nil {
		if g, err := s.cg.Open(rec.Spec.ID); err == nil {
			in.group = g
		} else {
			in.log.Debug("no cgroup to re-open", "error", err)
		}
	}
	s.mu.Lock()
	if _, ok := s.instances[in.id]; ok {
		s.mu.Unlock()
		return nil, false
	}
	s.instances[in.id] = in
	s.mu.Unlock()
	s.addLogs(in)

	in.mu.Lock()
	defer in.mu.Unlock()
	// With HoldRestored, no restart of a restored instance happens before
	// Resume, whether its process is gone already or dies later.
	in.held = s.cfg.HoldRestored && !rec.State.Terminal()
	switch {
	case rec.State.Terminal():
		in.pid = 0
	case rec.PID > 0 && s.adoptLocked(in, rec):
		in.log.Info("process adopted", "pid", in.pid, "state", string(in.state))
		if in.state == StateStopping {
			s.killLocked(in)
		} else {
			s.armStartedLocked(in)
		}
	case rec.State == StateBackoff:
		in.pid = 0
		p := in.spec.Restart.WithDefaults()
		delay := p.InitialDelay
		if p.NoBackoff {
			delay = 0
		}
		in.backoff = delay
		if !in.held {
			s.scheduleRestartLocked(in, delay)
		}
	default:
		// The process ended while nobody watched it. With HoldRestored the
		// restart waits for Resume: the caller first checks the instance
		// is still wanted here (it may have been replaced meanwhile).
		in.pid, in.exitCode, in.signal, in.phase = 0, -1, "", PhaseUnknown
		in.log.Info("process gone while supervisor was down", "pid", rec.PID, "hold_restart", in.held)
		s.afterExitLocked(in, restart.Exit{Code: -1, Unknown: true}, "exit status unknown")
	}
	return in, true
}

// adoptLocked watches rec's process if it is still the one we started.
func (s *Supervisor) adoptLocked(in *instance, rec record) bool {
	ticks, _, err := procStat(rec.PID)
	if err != nil || ticks != rec.StartTicks {
		if err == nil {
			in.log.Warn("pid reused by another process, not adopting", "pid", rec.PID)
		}
		return false
	}
	fd, err := openHandle(rec.PID)
	if err != nil {
		return false
	}
	// The pid could have been reused between the check and opening the
	// handle: check again now that a pidfd pins the process.
	if ticks, _, err := procStat(rec.PID); err != nil || ticks != rec.StartTicks {
		closeHandle(fd)
		return false
	}
	in.gen++
	in.pid, in.handle, in.startTicks, in.adopted = rec.PID, fd, rec.StartTicks, true
	if t := ticksTime(rec.StartTicks); !t.IsZero() {
		in.startTime = t
	}
	in.phase = PhaseRunning
	in.upOK = in.state == StateRunning || time.Since(in.startTime) >= in.spec.MinUptime
	in.healthy = in.state == StateRunning
	if err := s.reaper.add(watch{in: in, gen: in.gen, fd: fd}); err != nil {
		in.log.Warn("watch adopted process", "pid", rec.PID, "error", err)
		closeHandle(fd)
		in.pid, in.handle, in.adopted = 0, -1, false
		return false
	}
	return true
}

// fallbackResolved is enough of a resolved spec to stop an adopted process.
func fallbackResolved(spec Spec) resolved {
	r := resolved{stopSignal: syscall.SIGTERM, stopTimeout: DefaultStopTimeout, path: "/nonexistent"}
	if sig, err := ParseSignal(spec.StopSignal); err == nil && spec.StopSignal != "" && checkStopSignal(sig) == nil {
		r.stopSignal = sig
	}
	if spec.StopTimeout > 0 {
		r.stopTimeout = spec.StopTimeout
	}
	r.argv = spec.Command
	return r
}
