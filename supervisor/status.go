package supervisor

import (
	"context"
	"time"

	"github.com/shirou/gopsutil/v4/process"
)

// Status is a snapshot of one instance.
type Status struct {
	ID    string `json:"id"`
	State State  `json:"state"`
	Phase Phase  `json:"phase"`
	// PID is the live process's id; 0 when there is none.
	PID int `json:"pid,omitempty"`
	// StartTime is when the current (or last) process started.
	StartTime time.Time `json:"start_time"`
	// Since is when State was entered.
	Since time.Time `json:"since"`
	// Restarts counts restarts by reason: "fail", "oom", "health", "manual".
	Restarts map[string]int `json:"restarts,omitempty"`
	// ExitCode is the last exit code; -1 when unknown or killed by a signal.
	ExitCode int `json:"exit_code"`
	// Signal is the signal that killed the last process ("KILL"), if any.
	Signal string `json:"signal,omitempty"`
	// Reason says why State was entered ("exit code 1", "oom", "stopped").
	Reason string `json:"reason,omitempty"`
	// Health is the error of the current process's last health check
	// while its checks fail ("http check: ... connection refused"), ""
	// once one passes, without a check, or before the first result.
	// HealthFailures counts the consecutive failures. The StateHandler
	// hears of a change of Health (a check starting to fail, failing
	// differently, or passing again) with a Status in the same State,
	// never of HealthFailures alone: a failing check costs one
	// notification, not one per probe.
	Health         string `json:"health,omitempty"`
	HealthFailures int    `json:"health_failures,omitempty"`
	// CPUPercent and RSSBytes are read on demand by Supervisor.Status
	// (gopsutil); zero elsewhere.
	CPUPercent float64 `json:"cpu_percent,omitempty"`
	RSSBytes   uint64  `json:"rss_bytes,omitempty"`
	// Backoff is the delay before the restart, in state backoff.
	Backoff time.Duration `json:"backoff,omitempty"`
	// Held reports a restart that Restore holds until Resume
	// (Config.HoldRestored).
	Held bool `json:"held,omitempty"`
	// Adopted reports whether the process was re-adopted by Restore.
	Adopted bool `json:"adopted,omitempty"`
	// Restarting marks the stopping and exited states of Restart's stop
	// phase: the instance starts again at once, so a consumer that mirrors
	// states elsewhere (the agent, into the registry) may skip them rather
	// than show a stop that is not one.
	Restarting bool `json:"restarting,omitempty"`
	// Meta is the Spec's Meta.
	Meta map[string]string `json:"meta,omitempty"`
}

// Has reports whether the supervisor knows instance id, in any state. It
// is cheap: unlike Status it reads nothing of the process.
func (s *Supervisor) Has(id string) bool {
	_, err := s.lookup(id)
	return err == nil
}

// Status returns the instance's status, with CPU and RSS read on demand.
func (s *Supervisor) Status(id string) (Status, bool) {
	in, err := s.lookup(id)
	if err != nil {
		return Status{}, false
	}
	in.mu.Lock()
	st := in.statusLocked()
	continued := in.continued
	in.mu.Unlock()
	if st.PID > 0 {
		if _, state, err := procStat(st.PID); err == nil {
			switch {
			case state == 'T' || state == 't':
				st.Phase = PhaseStopped
			case continued:
				st.Phase = PhaseContinued
			}
		}
		if p, err := process.NewProcess(int32(st.PID)); err == nil {
			if cpu, err := p.CPUPercent(); err == nil {
				st.CPUPercent = cpu
			}
			if mem, err := p.MemoryInfo(); err == nil {
				st.RSSBytes = mem.RSS
			}
		}
	}
	return st, true
}

// List returns the status of every instance, sorted by id, without CPU and
// RSS (call Status for those).
func (s *Supervisor) List() []Status {
	ins := s.snapshot()
	out := make([]Status, 0, len(ins))
	for _, in := range ins {
		in.mu.Lock()
		out = append(out, in.statusLocked())
		in.mu.Unlock()
	}
	return out
}

// Wait blocks until the instance is terminal (exited or failed) and returns
// its status; it returns at once if it already is. When ctx ends first it
// returns the current status and ctx's error; when Run returns first,
// ErrStopped.
func (s *Supervisor) Wait(ctx context.Context, id string) (Status, error) {
	for {
		in, err := s.lookup(id)
		if err != nil {
			return Status{}, err
		}
		in.mu.Lock()
		st, ch := in.statusLocked(), in.changed
		in.mu.Unlock()
		if st.State.Terminal() {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, ctx.Err()
		case <-s.doneCh:
			return st, ErrStopped
		}
	}
}
