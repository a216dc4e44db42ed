package registry

import (
	"errors"
	"testing"
)

// TestCheckTypeValid: every member of CheckTypes is valid and accepted in a
// proc type; anything else is neither.
func TestCheckTypeValid(t *testing.T) {
	t.Parallel()
	proc := func(ct CheckType) *ProcType {
		return &ProcType{App: "web", Name: "http", Health: &HealthCheck{Type: ct, Command: []string{"true"}}}
	}
	for _, ct := range CheckTypes() {
		if !ct.Valid() {
			t.Errorf("CheckType(%q).Valid() = false for a member of CheckTypes", ct)
		}
		if err := validProcType(proc(ct)); err != nil {
			t.Errorf("proc type with a %q check refused: %v", ct, err)
		}
	}
	for _, ct := range []CheckType{"", "udp", "HTTP", "exec "} {
		if ct.Valid() {
			t.Errorf("CheckType(%q).Valid() = true", ct)
		}
		if err := validProcType(proc(ct)); !errors.Is(err, ErrInvalid) {
			t.Errorf("proc type with a %q check: %v, want ErrInvalid", ct, err)
		}
	}
}
