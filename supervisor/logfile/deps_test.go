package logfile

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps this package a leaf of the supervisor: no etcd, registry,
// agent, or supervisor imports (see doc.go).
func TestDeps(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		switch {
		case strings.HasPrefix(dep, "go.etcd.io/"),
			strings.HasPrefix(dep, "github.com/visorhq/visor/registry"),
			strings.HasPrefix(dep, "github.com/visorhq/visor/agent"),
			dep == "github.com/visorhq/visor/supervisor":
			t.Errorf("depends on %s", dep)
		}
	}
}
