package supervisor

import (
	"errors"
	"io/fs"
	"syscall"
)

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
