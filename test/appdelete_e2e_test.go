package test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// TestAppDeleteStopsItsInstances (issue 17, item 3): `visor app delete
// --force` left the app's instances running for good. Now it stops them
// through stop tickets before the records go, and --wait returns once they
// have: no process of the app is left, the app is gone, and its instance
// records are terminal. Without --force a live app is refused, and nothing
// stops.
func TestAppDeleteStopsItsInstances(t *testing.T) {
	c := newCluster(t)
	c.app("doomed")
	c.startAgent("host-a")
	c.startAgent("host-b")
	_, err := c.reg.Scale(c.ctx, "doomed", "v1", "web", 4)
	must(t, err)
	c.waitSettled("doomed", 4, time.Minute)
	visor := func(args ...string) (string, error) {
		cmd := exec.CommandContext(c.ctx, c.bin, append([]string{"--endpoints", strings.Join(c.etcd.Endpoints(), ","), "--prefix", c.prefix}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := visor("app", "delete", "doomed"); err == nil || !strings.Contains(out, "--force") {
		t.Fatalf("delete of a live app without --force: %v\n%s", err, out)
	}
	if n := len(c.workloads()); n != 4 {
		t.Fatalf("refused delete: %d workload processes, want 4", n)
	}
	out, err := visor("app", "delete", "doomed", "--force", "--wait", "--wait-timeout", "60s")
	if err != nil || !strings.Contains(out, "deleted app doomed") {
		t.Fatalf("app delete --force --wait: %v\n%s", err, out)
	}
	if left := c.workloads(); len(left) != 0 {
		t.Fatalf("after app delete --wait, processes left: %v", left)
	}
	if _, err := c.reg.App(c.ctx, "doomed"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("app after delete: %v, want not found", err)
	}
	insts, err := c.reg.AppInstances(c.ctx, "doomed")
	must(t, err)
	for _, in := range insts {
		if !in.State.Terminal() {
			t.Fatalf("instance %s is %s after delete --wait", in.ID, in.State)
		}
	}
}
