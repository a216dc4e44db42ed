package main

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/visorhq/visor/registry"
)

// restartInPlace carries out a restart ticket as an agent does: the
// instance runs again with a new pid and one more manual restart, written
// before the ticket is completed. Other tickets are carried out as usual.
func restartInPlace(ctx context.Context, sess *registry.HostSession, tk registry.Ticket) error {
	if tk.Op != registry.TicketRestart {
		return carryOut(ctx, sess, tk)
	}
	inst, err := sess.Claim(ctx, tk)
	if err != nil {
		return err
	}
	restarts := map[string]int{"manual": inst.Restarts["manual"] + 1}
	inst.State, inst.PID, inst.Restarts = registry.InstanceRunning, inst.PID+1, restarts
	if err := sess.UpdateInstance(ctx, inst); err != nil {
		return err
	}
	return sess.Complete(ctx, tk)
}

// crashOnRestart carries out a restart ticket whose new process fails at
// once: the instance ends failed.
func crashOnRestart(ctx context.Context, sess *registry.HostSession, tk registry.Ticket) error {
	if tk.Op != registry.TicketRestart {
		return carryOut(ctx, sess, tk)
	}
	inst, err := sess.Claim(ctx, tk)
	if err != nil {
		return err
	}
	inst.State, inst.PID, inst.Reason = registry.InstanceFailed, 0, "exec: no such file"
	if err := sess.UpdateInstance(ctx, inst); err != nil {
		return err
	}
	return sess.Complete(ctx, tk)
}

// serve runs handle for every ticket host h1 may claim until the test ends.
func serve(t *testing.T, h *harness, handle func(context.Context, *registry.HostSession, registry.Ticket) error) *registry.HostSession {
	r := h.registry()
	sess := registerHost(t, r, "h1")
	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveTickets(ctx, r, sess, errc, handle)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		select {
		case err := <-errc:
			t.Errorf("agent: %v", err)
		default:
		}
	})
	return sess
}

// runningIDs returns the ids of app web's running instances.
func runningIDs(t *testing.T, h *harness) []string {
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
	return ids
}

func TestRestartAndStop(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	serve(t, h, restartInPlace)
	h.ok("scale", "web", "v1", "web=2", "--wait", "--wait-timeout", "60s")
	ids := runningIDs(t, h)
	if len(ids) != 2 {
		t.Fatalf("running: %v", ids)
	}

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
	// One bad id does not hold back the others, and the exit says so.
	res2 := h.run("restart", "web-web-00000000", ids[0])
	checkFailure(t, res2, 1, []string{"web-web-00000000", "not found"}, nil)
	if !strings.Contains(res2.stdout, "restart ticket ") || !strings.Contains(res2.stdout, ids[0]) {
		t.Errorf("restart of a good and a bad id: stdout %q", res2.stdout)
	}
}

func TestRestartWaitReportsFailure(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	serve(t, h, crashOnRestart)
	h.ok("scale", "web", "v1", "web=1", "--wait", "--wait-timeout", "60s")
	ids := runningIDs(t, h)
	if len(ids) != 1 {
		t.Fatalf("running: %v", ids)
	}
	res := h.run("restart", ids[0], "--wait", "--wait-timeout", "60s")
	checkFailure(t, res, 1, []string{"restart " + ids[0], "failed", "exec: no such file"}, nil)
}

func TestRestartWaitTimesOut(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	h.ok("scale", "web", "v1", "web=1")
	// h1 runs the instance, then takes no more tickets.
	runInstances(t, h.registry(), "h1", 1)
	ids := runningIDs(t, h)
	if len(ids) != 1 {
		t.Fatalf("running: %v", ids)
	}
	res := h.run("restart", ids[0], "--wait", "--wait-timeout", "1s")
	checkFailure(t, res, 1, []string{"timed out after 1s", ids[0], "running"}, nil)
}
