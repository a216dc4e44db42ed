package supervisor

import (
	"fmt"
	"strings"
	"syscall"
)

var signalsByName = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
	"TERM": syscall.SIGTERM, "ALRM": syscall.SIGALRM, "CONT": syscall.SIGCONT,
	"STOP": syscall.SIGSTOP, "TSTP": syscall.SIGTSTP, "WINCH": syscall.SIGWINCH,
	"ABRT": syscall.SIGABRT, "TTIN": syscall.SIGTTIN,
	"TTOU": syscall.SIGTTOU,
}

// ParseSignal returns the signal named name: "TERM", "SIGTERM" or "term".
// An unknown name is an error wrapping ErrInvalidSpec.
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(name)), "SIG")
	if sig, ok := signalsByName[n]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q", ErrInvalidSpec, name)
}

// checkStopSignal refuses, wrapping ErrInvalidSpec, the signals that pause
// or resume a process instead of ending it (STOP, TSTP, TTIN, TTOU, CONT):
// as a stop signal they would only hold the process (or, CONT, do nothing)
// until the SIGKILL of the grace period's end, and Stop follows the stop
// signal with a SIGCONT, which would undo a pause at once.
func checkStopSignal(sig syscall.Signal) error {
	switch sig {
	case syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGCONT:
		return fmt.Errorf("%w: stop signal %s pauses or resumes a process, it does not stop it", ErrInvalidSpec, signalName(sig))
	}
	return nil
}

// signalName returns the short name of sig ("TERM"), or its number.
func signalName(sig syscall.Signal) string {
	for n, s := range signalsByName {
		if s == sig {
			return n
		}
	}
	return fmt.Sprintf("%d", int(sig))
}
