//go:build linux

package cgroup

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDelegatedBase checks where the instances' parent goes on a fake
// unified tree with systemd's delegation mark (trusted.delegate): below
// the unit's cgroup when the agent runs in a subgroup of it
// (DelegateSubgroup=agent), below the root when the agent runs in the
// delegated cgroup itself (systemd < 254: enabling controllers there would
// make the unit's next start fail while instances run) or when nothing is
// delegated.
func TestDelegatedBase(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (trusted.* extended attributes)")
	}
	root := t.TempDir()
	unit := filepath.Join(root, "system.slice", "visor-agent.service")
	if err := os.MkdirAll(filepath.Join(unit, "agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(t.TempDir(), "cgroup")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(self, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	log := testLogger(t)
	write("0::/system.slice/visor-agent.service/agent\n")
	if got := delegatedBase(root, self, log); got != root {
		t.Errorf("nothing delegated: %s, want the root %s", got, root)
	}
	if err := unix.Setxattr(unit, "trusted.delegate", []byte("1"), 0); err != nil {
		t.Skipf("file system of %s takes no trusted.* attributes: %v", root, err)
	}
	if got := delegatedBase(root, self, log); got != unit {
		t.Errorf("agent in a subgroup of the delegated unit: %s, want %s", got, unit)
	}
	write("1:name=systemd:/x\n0::/system.slice/visor-agent.service\n")
	if got := delegatedBase(root, self, log); got != root {
		t.Errorf("agent in the delegated cgroup itself: %s, want the root %s", got, root)
	}
	write("0::/\n")
	if got := delegatedBase(root, self, log); got != root {
		t.Errorf("agent in the root cgroup: %s, want the root", got)
	}
}
