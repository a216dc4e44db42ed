package supervisor

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procStat returns the start time of pid in microseconds since the epoch
// (its identity against pid reuse) and its state as a /proc letter ('T'
// stopped, 'Z' zombie, 'R' otherwise), from sysctl kern.proc.pid.
func procStat(pid int) (startTicks uint64, state byte, err error) {
	kp, err := unix.SysctlKinfoProc("kern.proc.pid", pid)
	if err != nil {
		return 0, 0, fmt.Errorf("sysctl kern.proc.pid %d: %w", pid, err)
	}
	if int(kp.Proc.P_pid) != pid {
		return 0, 0, fmt.Errorf("sysctl kern.proc.pid %d: %w", pid, syscall.ESRCH)
	}
	st := kp.Proc.P_starttime
	startTicks = uint64(st.Sec)*1e6 + uint64(st.Usec)
	switch kp.Proc.P_stat {
	case 4: // SSTOP
		state = 'T'
	case 5: // SZOMB
		state = 'Z'
	default:
		state = 'R'
	}
	return startTicks, state, nil
}

// ticksTime converts a procStat start time to wall-clock time.
func ticksTime(ticks uint64) time.Time { return time.UnixMicro(int64(ticks)) }

// prepareHandle: darwin has no pidfd; the handle is the pid, watched by
// kqueue (EVFILT_PROC).
func prepareHandle(*syscall.SysProcAttr) func(pid int) (int, error) {
	return func(pid int) (int, error) { return pid, nil }
}

// openHandle returns pid as its handle if the process exists.
func openHandle(pid int) (int, error) {
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return -1, fmt.Errorf("open process %d: %w", pid, err)
	}
	return pid, nil
}

// closeHandle: nothing to close for a pid.
func closeHandle(int) {}

// reapHandle reaps exited child pid; the status of a process that is not
// our child is unknown.
func reapHandle(_, pid int) exitStatus { return wait4Status(pid, false) }

// reapBlocking waits for child pid to exit and reaps it.
func reapBlocking(_, pid int) { wait4Status(pid, true) }
