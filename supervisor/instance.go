package supervisor

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/supervisor/cgroup"
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
	health     string        // the last probe's error while it fails; "" once one passes
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

// newInstance builds an instance without a process.
func (s *Supervisor) newInstance(spec Spec, rs resolved) *instance {
	s.mu.Lock()
	s.seed++ // Seeded starts nearby seeds far apart
	seed := s.seed
	s.mu.Unlock()
	return &instance{
		id:       spec.ID,
		spec:     spec,
		rs:       rs,
		log:      s.log.With("instance", spec.ID),
		handle:   -1,
		exitCode: -1,
		phase:    PhaseUnknown,
		restarts: make(map[string]int),
		tracker:  restart.NewTracker(spec.Restart, backoff.Seeded(seed)),
		changed:  make(chan struct{}),
	}
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
		Health:    in.health,
		Adopted:   in.adopted,
		Meta:      maps.Clone(in.spec.Meta),
	}
	if in.restarting && (in.state == StateStopping || in.state == StateExited) {
		st.Restarting = true
	}
	if in.health != "" {
		st.HealthFailures = in.fails
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
