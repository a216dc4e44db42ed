package supervisor

import (
	"context"
	"time"
)

// healthLoop probes the process of generation gen until ctx ends: first
// after a short delay, then every Period.
func (s *Supervisor) healthLoop(ctx context.Context, in *instance, gen uint64, h HealthCheck, p prober) {
	t := time.NewTimer(min(h.Period, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := probeWithin(ctx, p, h.Timeout)
		if ctx.Err() != nil {
			return
		}
		s.healthResult(in, gen, h, err)
		t.Reset(h.Period)
	}
}

// setHealthLocked sets the instance's health message and tells the
// StateHandler when it changed (Status.Health).
func (s *Supervisor) setHealthLocked(in *instance, msg string) {
	if in.health == msg {
		return
	}
	in.health = msg
	if s.notes != nil {
		s.notes.push(in.statusLocked())
	}
}

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
		if in.state == StateStarting && in.upOK {
			in.health = "" // the move to running just below carries it
		} else {
			s.setHealthLocked(in, "")
		}
		s.maybeRunningLocked(in)
		return
	}
	in.fails++
	s.setHealthLocked(in, err.Error())
	in.log.Debug("health check failed", "failures", in.fails, "error", err)
	if in.state == StateRunning && in.fails >= h.FailureThreshold && !in.healthKill {
		in.log.Warn("health check failing, restarting", "failures", in.fails, "error", err)
		in.healthKill = true
		s.killLocked(in)
	}
}
