package registry

import (
	"errors"
	"testing"
)

// TestSignalNamesAndNumbers: every name the seed's Proc.Signal lists is
// accepted (with or without SIG, any case) and stored upper-case without
// the prefix; numbers 1 to 64 are accepted as they are (an agent refuses
// one its OS lacks); anything else is ErrInvalid (issue 17, item 7).
func TestSignalNamesAndNumbers(t *testing.T) {
	seed := []string{"ABRT", "ALRM", "BUS", "CHLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO",
		"IOT", "KILL", "PIPE", "PROF", "QUIT", "SEGV", "STOP", "SYS", "TERM", "TRAP",
		"TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ"}
	if len(seed) != 30 || len(signals) != 30 {
		t.Fatalf("seed lists %d names, registry knows %d; want 30", len(seed), len(signals))
	}
	for _, n := range seed {
		for _, in := range []string{n, "SIG" + n, "sig" + n} {
			if got, err := normSignal("signal", in); err != nil || got != n {
				t.Errorf("normSignal(%q) = %q, %v; want %q", in, got, err, n)
			}
		}
	}
	for in, want := range map[string]string{"1": "1", "15": "15", "64": "64", "": ""} {
		if got, err := normSignal("signal", in); err != nil || got != want {
			t.Errorf("normSignal(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "65", "-1", "+1", "015", "BOGUS", "SIG", "1.5"} {
		if got, err := normSignal("signal", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("normSignal(%q) = %q, %v; want ErrInvalid", bad, got, err)
		}
	}
}
