package registry

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps registry free of process management: it must not import
// os/exec or the supervisor (see DESIGN.md, "direction of dependencies").
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %v", deps)
	}
	for _, d := range deps {
		if d == "os/exec" || d == "github.com/visorhq/visor/supervisor" || strings.HasPrefix(d, "github.com/visorhq/visor/supervisor/") ||
			d == "github.com/visorhq/visor/agent" {
			t.Errorf("registry depends on %s", d)
		}
	}
}
