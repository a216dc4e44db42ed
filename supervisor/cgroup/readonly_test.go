//go:build linux

package cgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProbeSkipsReadOnlyV1 builds a v1 tree whose memory and pids
// hierarchies are mounted read-only with the parent group already there (as
// systemd-nspawn shows a hybrid host's), and checks that Probe, run in a
// private mount namespace, does not pick v1: before the fix it did (mkdir
// reports EEXIST before EROFS), and every instance start then failed with
// "read-only file system". Found by the VM feasibility run (issue 16).
func TestProbeSkipsReadOnlyV1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a read-only bind mount in a private mount namespace)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare(1)")
	}
	root := t.TempDir()
	for _, c := range []string{"memory", "pids"} {
		if err := os.MkdirAll(filepath.Join(root, c, "visor"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, c, "cgroup.procs"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	probe := func(readOnly bool) string {
		t.Helper()
		script := `exec "$0" -test.run=^$`
		if readOnly {
			script = `mount --bind -o ro "$1/memory" "$1/memory" && mount --bind -o ro "$1/pids" "$1/pids" && ` + script
		}
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, os.Args[0], root)
		cmd.Env = append(os.Environ(), helperEnv+"=probe:"+root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("probe helper: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := probe(false); !strings.HasPrefix(got, ModeV1+" ") {
		t.Fatalf("writable tree: Probe picked %q, want v1", got)
	}
	if got := probe(true); got != ModeNone {
		t.Fatalf("read-only tree: Probe picked %q, want %q", got, ModeNone)
	}
}
