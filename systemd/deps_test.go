package systemd

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps systemd a leaf of the agent: it must not import the agent,
// the registry, the supervisor or etcd (see DESIGN.md, "direction of
// dependencies"); cmd/visor wires it to the agent through callbacks.
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
		for _, bad := range []string{
			"github.com/visorhq/visor/agent",
			"github.com/visorhq/visor/registry",
			"github.com/visorhq/visor/supervisor",
			"go.etcd.io/",
		} {
			if d == bad || strings.HasPrefix(d, strings.TrimSuffix(bad, "/")+"/") {
				t.Errorf("systemd depends on %s", d)
			}
		}
	}
}
