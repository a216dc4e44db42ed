package agent

import (
	"testing"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// TestCheckTypesMatch: the registry stores health check kinds under the
// supervisor's names (it may not import the supervisor), and the spec
// builder converts one into the other by name, so the two sets must be
// equal: a kind the registry accepts and the supervisor refuses would fail
// every start of that proc type.
func TestCheckTypesMatch(t *testing.T) {
	t.Parallel()
	reg, sup := registry.CheckTypes(), supervisor.CheckTypes()
	for _, rt := range reg {
		if st := supervisor.CheckType(rt); !st.Valid() {
			t.Errorf("registry check type %q is not a supervisor check type", rt)
		}
	}
	for _, st := range sup {
		if rt := registry.CheckType(st); !rt.Valid() {
			t.Errorf("supervisor check type %q is not a registry check type", st)
		}
	}
	if len(reg) != len(sup) {
		t.Errorf("registry has %d check types %v, supervisor %d %v", len(reg), reg, len(sup), sup)
	}
	for _, bad := range []string{"", "udp", "HTTP"} {
		if registry.CheckType(bad).Valid() || supervisor.CheckType(bad).Valid() {
			t.Errorf("check type %q is valid", bad)
		}
	}
}
