package supervisor

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// signalsByName holds the signal names the seed's Proc.Signal accepts
// (gocircuit element/proc: ABRT ... XFSZ, 30 names with IOT, an alias of
// ABRT), all of which Linux and Darwin have.
var signalsByName = map[string]syscall.Signal{
	"ABRT": syscall.SIGABRT, "ALRM": syscall.SIGALRM, "BUS": syscall.SIGBUS,
	"CHLD": syscall.SIGCHLD, "CONT": syscall.SIGCONT, "FPE": syscall.SIGFPE,
	"HUP": syscall.SIGHUP, "ILL": syscall.SIGILL, "INT": syscall.SIGINT,
	"IO": syscall.SIGIO, "IOT": syscall.SIGIOT, "KILL": syscall.SIGKILL,
	"PIPE": syscall.SIGPIPE, "PROF": syscall.SIGPROF, "QUIT": syscall.SIGQUIT,
	"SEGV": syscall.SIGSEGV, "STOP": syscall.SIGSTOP, "SYS": syscall.SIGSYS,
	"TERM": syscall.SIGTERM, "TRAP": syscall.SIGTRAP, "TSTP": syscall.SIGTSTP,
	"TTIN": syscall.SIGTTIN, "TTOU": syscall.SIGTTOU, "URG": syscall.SIGURG,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "VTALRM": syscall.SIGVTALRM,
	"WINCH": syscall.SIGWINCH, "XCPU": syscall.SIGXCPU, "XFSZ": syscall.SIGXFSZ,
}

// ParseSignal returns the signal named name: "TERM", "SIGTERM" or "term",
// or a number the OS has ("15"; on Linux up to 64, the real-time signals
// included; on Darwin up to 31). Anything else is an error wrapping
// ErrInvalidSpec.
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(name)), "SIG")
	if sig, ok := signalsByName[n]; ok {
		return sig, nil
	}
	if num, err := strconv.Atoi(n); err == nil && n == strconv.Itoa(num) {
		if num < 1 || num > maxSignal {
			return 0, fmt.Errorf("%w: signal number %d: this OS has signals 1 to %d", ErrInvalidSpec, num, maxSignal)
		}
		return syscall.Signal(num), nil
	}
	return 0, fmt.Errorf("%w: unknown signal %q: want a name such as TERM, HUP or USR1, or a number from 1 to %d", ErrInvalidSpec, name, maxSignal)
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

// signalName returns the short name of sig ("TERM", "ABRT" rather than its
// alias "IOT"), or its number.
func signalName(sig syscall.Signal) string {
	if sig == syscall.SIGABRT {
		return "ABRT"
	}
	for n, s := range signalsByName {
		if s == sig {
			return n
		}
	}
	return strconv.Itoa(int(sig))
}
