package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times; it is 100 on
// every Linux architecture (it is part of the /proc ABI).
const clockTicks = 100

// procStat returns field 22 (starttime, clock ticks since boot) and field 3
// (state) of /proc/<pid>/stat.
func procStat(pid int) (startTicks uint64, state byte, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// comm (field 2) may hold spaces and parentheses: parse after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state), so field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	startTicks, err = strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return startTicks, fields[0][0], nil
}

var bootTime = sync.OnceValue(func() time.Time {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			sec, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err == nil {
				return time.Unix(sec, 0)
			}
		}
	}
	return time.Time{}
})

// ticksTime converts a /proc start time to wall-clock time.
func ticksTime(ticks uint64) time.Time {
	bt := bootTime()
	if bt.IsZero() {
		return time.Time{}
	}
	return bt.Add(time.Duration(ticks) * (time.Second / clockTicks))
}

// sigchldInfo is the SIGCHLD layout of siginfo_t filled by waitid.
type sigchldInfo struct {
	signo, errno, code, _ int32
	pid                   int32
	uid                   uint32
	status                int32
	_                     [100]byte
}

// CLD_* codes of siginfo_t.si_code.
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// prepareHandle asks ForkExec for a pidfd (CLONE_PIDFD); the returned func
// gives it after the fork, falling back to pidfd_open.
func prepareHandle(sys *syscall.SysProcAttr) func(pid int) (int, error) {
	fd := -1
	sys.PidFD = &fd
	return func(pid int) (int, error) {
		if fd >= 0 {
			return fd, nil
		}
		return openHandle(pid)
	}
}

// openHandle opens a pidfd for pid: it pins the process, so a later check
// of its start time cannot race with pid reuse.
func openHandle(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return fd, nil
}

// closeHandle closes a pidfd.
func closeHandle(h int) {
	if h >= 0 {
		unix.Close(h)
	}
}

// reapHandle collects the exit status of the exited process behind pidfd
// h. A process that is not our child (adopted from an earlier supervisor)
// cannot be waited for: its status is unknown.
func reapHandle(h, _ int) exitStatus {
	return waitidPidfd(h, unix.WNOHANG)
}

// reapBlocking waits for the process (pidfd h, or pid when h < 0) to exit
// and reaps it.
func reapBlocking(h, pid int) {
	if h < 0 {
		wait4Status(pid, true)
		return
	}
	waitidPidfd(h, 0)
}

func waitidPidfd(h, opts int) exitStatus {
	var info sigchldInfo
	for {
		err := unix.Waitid(unix.P_PIDFD, h, (*unix.Siginfo)(unsafe.Pointer(&info)), unix.WEXITED|opts, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err == nil && info.pid == 0 && opts&unix.WNOHANG != 0 {
			// Our child, readable but not yet waitable: it is exiting, so
			// a blocking wait returns at once.
			opts &^= unix.WNOHANG
			continue
		}
		if err != nil || info.pid == 0 {
			return unknownExit
		}
		break
	}
	switch info.code {
	case cldExited:
		return exitStatus{code: int(info.status)}
	case cldKilled, cldDumped:
		return exitStatus{code: -1, signal: syscall.Signal(info.status), signaled: true}
	}
	return unknownExit
}
