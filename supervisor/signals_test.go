package supervisor

import (
	"errors"
	"syscall"
	"testing"
)

// TestParseSignal: the seed's 30 names, any case, with or without SIG;
// numbers the OS has; nothing else (issue 17, item 7).
func TestParseSignal(t *testing.T) {
	if len(signalsByName) != 30 {
		t.Fatalf("%d signal names; the seed lists 30", len(signalsByName))
	}
	for in, want := range map[string]syscall.Signal{
		"TERM": syscall.SIGTERM, "sigxcpu": syscall.SIGXCPU, "SIGIOT": syscall.SIGABRT,
		" urg ": syscall.SIGURG, "9": syscall.SIGKILL, "1": syscall.SIGHUP,
	} {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if got, err := ParseSignal("31"); err != nil || got != syscall.Signal(31) {
		t.Errorf("ParseSignal(31) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "-9", "09", "BOGUS", "99", "SIG"} {
		if got, err := ParseSignal(bad); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("ParseSignal(%q) = %v, %v; want ErrInvalidSpec", bad, got, err)
		}
	}
	if n := signalName(syscall.SIGABRT); n != "ABRT" {
		t.Errorf("signalName(SIGABRT) = %q", n)
	}
}
