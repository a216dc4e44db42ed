package supervisor

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the supervisor free of the registry, the agent and etcd
// (see DESIGN.md: supervisor knows nothing of the registry).
func TestDeps(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "github.com/visorhq/visor/supervisor/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{"go.etcd.io/", "github.com/visorhq/visor/registry", "github.com/visorhq/visor/agent"}
	for dep := range strings.FieldsSeq(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("supervisor depends on %s", dep)
			}
		}
	}
}
