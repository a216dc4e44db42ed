package discovery

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps discovery a library on etcd: no process control, and no
// dependency on the packages that wire it in.
func TestDeps(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"os/exec",
		"github.com/visorhq/visor/supervisor",
		"github.com/visorhq/visor/agent",
		"github.com/visorhq/visor/registry",
		"github.com/visorhq/visor/internal/etcdtest",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("discovery imports %s", dep)
			}
		}
	}
}
