package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/visorhq/visor/registry"
)

// onRestart returns a ticket handler that carries out a restart ticket as
// an agent does: claim it, write the instance as outcome leaves it, then
// complete the ticket. Other tickets are carried out as usual.
func onRestart(outcome func(*registry.Instance)) func(context.Context, *registry.HostSession, registry.Ticket) error {
	return func(ctx context.Context, sess *registry.HostSession, tk registry.Ticket) error {
		if tk.Op != registry.TicketRestart {
			return carryOut(ctx, sess, tk)
		}
		inst, err := sess.Claim(ctx, tk)
		if err != nil {
			return err
		}
		outcome(&inst)
		if err := sess.UpdateInstance(ctx, inst); err != nil {
			return err
		}
		return sess.Complete(ctx, tk)
	}
}

// restartInPlace: the instance runs again with a new pid and one more
// manual restart.
var restartInPlace = onRestart(func(in *registry.Instance) {
	in.State, in.PID, in.Restarts = registry.InstanceRunning, in.PID+1, map[string]int{"manual": in.Restarts["manual"] + 1}
})

// crashOnRestart: the new process fails at once and the instance ends
// failed.
var crashOnRestart = onRestart(func(in *registry.Instance) {
	in.State, in.PID, in.Reason = registry.InstanceFailed, 0, "exec: no such file"
})

// runningIDs returns the ids of app web's running instances, and fails
// unless there are n.
func runningIDs(t *testing.T, h *harness, n int) []string {
	t.Helper()
	insts, err := h.registry().AppInstances(testContext(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, in := range insts {
		if in.State == registry.InstanceRunning {
			ids = append(ids, in.ID)
		}
	}
	if len(ids) != n {
		t.Fatalf("running instances of web: %v, want %d", ids, n)
	}
	return ids
}

// runWeb scales web/v1/web to n on host h1, whose tickets handle carries
// out from then on, and returns the running instances' ids.
func runWeb(t *testing.T, h *harness, n int, handle func(context.Context, *registry.HostSession, registry.Ticket) error) []string {
	t.Helper()
	setupWeb(h)
	serve(t, h, handle)
	h.ok("scale", "web", "v1", fmt.Sprintf("web=%d", n), "--wait", "--wait-timeout", "60s")
	return runningIDs(t, h, n)
}

func TestRestartAndStop(t *testing.T) {
	h := newHarness(t)
	ids := runWeb(t, h, 2, restartInPlace)

	// Without --wait: one line per ticket written.
	out := h.ok("restart", ids[0])
	if !strings.HasPrefix(out, "restart ticket ") || !strings.Contains(out, " for "+ids[0]+" on h1\n") {
		t.Errorf("restart: %q", out)
	}

	// With --wait, both at once, as JSON.
	var res []map[string]any
	h.okJSON(&res, "restart", ids[0], ids[1], "--wait", "--wait-timeout", "60s")
	if len(res) != 2 {
		t.Fatalf("restart --wait -o json: %v", res)
	}
	checkFields(t, "restart -o json", res[0], "instance", "op", "ticket", "host", "state", "pid")
	for _, l := range res {
		if l["op"] != "restart" || l["state"] != "running" || l["host"] != "h1" {
			t.Errorf("restart --wait: %v", l)
		}
	}
	in, err := h.registry().Instance(testContext(t), ids[0])
	if err != nil || in.Restarts["manual"] != 2 {
		t.Errorf("instance %s after two restarts: %+v, %v", ids[0], in, err)
	}

	out = h.ok("stop", ids[1], "--wait", "--wait-timeout", "60s")
	if !strings.Contains(out, "stop ticket ") || !strings.HasSuffix(out, ": exited\n") {
		t.Errorf("stop --wait: %q", out)
	}
	// A stopped instance takes no more tickets: bad input, named.
	h.fails(2, []string{ids[1], "exited"}, "stop", ids[1])
	h.fails(1, []string{"web-web-00000000", "not found"}, "restart", "web-web-00000000")
	// Every failing id is named on the one line of the error.
	h.fails(1, []string{"restart web-web-00000000", "not found", "; restart web-web-00000001"},
		"restart", "web-web-00000000", "web-web-00000001")
	h.fails(1, []string{"stop web-web-00000000", "; stop web-web-00000001"},
		"stop", "web-web-00000000", "web-web-00000001", "--wait")
	// One bad id does not hold back the others, and the exit says so.
	res2 := h.run("restart", "web-web-00000000", ids[0])
	checkFailure(t, res2, 1, []string{"web-web-00000000", "not found"}, nil)
	if !strings.Contains(res2.stdout, "restart ticket ") || !strings.Contains(res2.stdout, ids[0]) {
		t.Errorf("restart of a good and a bad id: stdout %q", res2.stdout)
	}
}

func TestRestartWaitReportsFailure(t *testing.T) {
	h := newHarness(t)
	ids := runWeb(t, h, 1, crashOnRestart)
	res := h.run("restart", ids[0], "--wait", "--wait-timeout", "60s")
	checkFailure(t, res, 1, []string{"restart " + ids[0], "failed", "exec: no such file"}, nil)
}

func TestRestartWaitTimesOut(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	h.ok("scale", "web", "v1", "web=1")
	// h1 runs the instance, then takes no more tickets.
	runInstances(t, h.registry(), "h1", 1)
	ids := runningIDs(t, h, 1)
	res := h.run("restart", ids[0], "--wait", "--wait-timeout", "1s")
	checkFailure(t, res, exitWaitTimeout, []string{"timed out after 1s", ids[0], "running"}, nil)
}
