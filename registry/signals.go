package registry

import (
	"fmt"
	"strconv"
	"strings"
)

// signals are the signal names the seed's Proc.Signal accepts (gocircuit
// element/proc), which Linux and Darwin both have.
var signals = map[string]bool{
	"ABRT": true, "ALRM": true, "BUS": true, "CHLD": true, "CONT": true, "FPE": true,
	"HUP": true, "ILL": true, "INT": true, "IO": true, "IOT": true, "KILL": true,
	"PIPE": true, "PROF": true, "QUIT": true, "SEGV": true, "STOP": true, "SYS": true,
	"TERM": true, "TRAP": true, "TSTP": true, "TTIN": true, "TTOU": true, "URG": true,
	"USR1": true, "USR2": true, "VTALRM": true, "WINCH": true, "XCPU": true, "XFSZ": true,
}

// maxSignal is the highest signal number any supported OS has (Linux's
// SIGRTMAX). An agent refuses a number its own OS lacks.
const maxSignal = 64

// normSignal strips a "SIG" prefix and upper-cases a name; a number from 1
// to maxSignal stays a decimal number; "" stays "".
func normSignal(field, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	n := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if signals[n] {
		return n, nil
	}
	if num, err := strconv.Atoi(n); err == nil && n == strconv.Itoa(num) {
		if num < 1 || num > maxSignal {
			return "", fmt.Errorf("%w: %s %d is not a signal number (1 to %d)", ErrInvalid, field, num, maxSignal)
		}
		return n, nil
	}
	return "", fmt.Errorf("%w: %s %s is not a known signal name or number", ErrInvalid, field, short(s))
}
