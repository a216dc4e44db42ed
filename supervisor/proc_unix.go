//go:build linux || darwin

package supervisor

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// exitStatus is what the kernel says about an exited process.
type exitStatus struct {
	code     int // exit code, -1 when signaled or unknown
	signal   syscall.Signal
	signaled bool
	unknown  bool
}

// unknownExit is the status of a process that is not our child.
var unknownExit = exitStatus{code: -1, unknown: true}

// killGroup sends sig to process group pgid, ignoring a group that is gone.
func killGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return fmt.Errorf("kill group %d: refusing", pgid)
	}
	err := unix.Kill(-pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// wait4Status reaps child pid (WNOHANG unless block) and converts its
// status; a process that is not our child, or not exited, is unknown.
func wait4Status(pid int, block bool) exitStatus {
	opts := unix.WNOHANG
	if block {
		opts = 0
	}
	var ws unix.WaitStatus
	for {
		wpid, err := unix.Wait4(pid, &ws, opts, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || wpid != pid {
			return unknownExit
		}
		break
	}
	switch {
	case ws.Exited():
		return exitStatus{code: ws.ExitStatus()}
	case ws.Signaled():
		return exitStatus{code: -1, signal: syscall.Signal(ws.Signal()), signaled: true}
	}
	return unknownExit
}
