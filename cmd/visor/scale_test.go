package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/registry"
)

// setupWeb creates app web with revision v1 and process types web and worker.
func setupWeb(h *harness) {
	h.ok("app", "create", "web")
	h.ok("rev", "register", "web", "v1", "--dir", "/srv/web")
	h.ok("proc", "set", "web", "web", "--command", "./web")
	h.ok("proc", "set", "web", "worker", "--command", "./worker")
}

func TestScale(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)

	var res []map[string]any
	h.okJSON(&res, "scale", "web", "v1", "web=3", "worker=1")
	if len(res) != 2 {
		t.Fatalf("scale -o json: %v", res)
	}
	checkFields(t, "scale -o json", res[0], "app", "rev", "proc", "desired", "live", "pending", "started", "stopped", "cancelled")
	if res[0]["desired"] != 3.0 || len(res[0]["started"].([]any)) != 3 || len(res[1]["started"].([]any)) != 1 {
		t.Errorf("scale -o json: %v", res)
	}
	r := h.registry()
	ctx := testContext(t)
	if n, err := r.CurrentScale(ctx, "web", "v1", "web"); err != nil || n != 3 {
		t.Errorf("current scale: %d, %v", n, err)
	}

	// Down from 3 pending start tickets to 1 cancels two of them.
	out := h.ok("scale", "web", "v1", "web=1")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "PROC") ||
		strings.Join(strings.Fields(lines[1]), " ") != "web/v1/web 1 0 3 0 0 2" {
		t.Errorf("scale table: got\n%s", out)
	}
	tickets, err := r.Tickets(ctx)
	if err != nil || len(tickets) != 2 {
		t.Errorf("tickets after scale down: %d, %v", len(tickets), err)
	}

	h.fails(1, []string{"nope", "not found"}, "scale", "nope", "v1", "web=1")
	h.fails(1, []string{"v9", "not found"}, "scale", "web", "v9", "web=1")
	h.fails(1, []string{"db", "not found"}, "scale", "web", "v1", "db=1")
	h.fails(2, []string{"invalid", "Web"}, "scale", "web", "v1", "Web=1")
}

func TestScaleWaitTimesOut(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	// No agent runs: nothing ever starts.
	res := h.run("scale", "web", "v1", "web=2", "--wait", "--wait-timeout", "1s")
	checkFailure(t, res, exitWaitTimeout, []string{"timed out after 1s", "web/v1/web 0/2 running"}, nil)
	if !strings.Contains(res.stdout, "web/v1/web 0/2 running\n") {
		t.Errorf("progress missing: stdout %q", res.stdout)
	}
}

func TestScaleWaitReachesScale(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	r := h.registry()
	serve(t, h, carryOut)

	out := h.ok("scale", "web", "v1", "web=3", "worker=1", "--wait", "--wait-timeout", "60s")
	for _, want := range []string{"web/v1/web 3/3 running\n", "web/v1/worker 1/1 running\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("scale --wait: %q missing in\n%s", want, out)
		}
	}
	// Down to 1: the agent stops two; wait sees 1 running.
	res := h.run("scale", "web", "v1", "web=1", "--wait", "--wait-timeout", "60s", "-o", "json")
	if res.code != 0 || !strings.Contains(res.stderr, "web/v1/web 1/1 running\n") || !strings.HasPrefix(res.stdout, "[") {
		t.Errorf("scale down --wait -o json: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	insts, err := r.AppInstances(testContext(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	running := 0
	for _, i := range insts {
		if i.State == "running" {
			running++
		}
	}
	if running != 2 {
		t.Errorf("running instances: %d, want 2 (web=1, worker=1)", running)
	}
}

func TestScaleWaitShowsFailures(t *testing.T) {
	for _, tc := range []struct {
		name      string
		handle    func(context.Context, *registry.HostSession, registry.Ticket) error
		want      string
		what, why string
	}{
		{"failed", failStart, "web/v1/web 0/1 running (1 failed: command not found)",
			"instance web-web-", "failed: command not found"},
		{"released", releaseStart, "web/v1/web 0/1 running (1 start attempt failed: artifact missing)",
			"start of instance web-web-", "failed on every live host (1 of 3 attempts): artifact missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			setupWeb(h)
			serve(t, h, tc.handle)

			// Every start fails: the wait shows why and fails as soon as
			// the outcome is known (exit 1 naming the instance and the
			// reason), not at its timeout (exit 3; issue 17 item 1).
			res := h.run("scale", "web", "v1", "web=1", "--wait", "--wait-timeout", "10m")
			checkFailure(t, res, 1, []string{tc.what, tc.why, "will not reach the desired count"}, nil)
			if !strings.Contains(res.stdout, tc.want+"\n") {
				t.Errorf("progress does not show the failure: stdout %q", res.stdout)
			}
		})
	}
}

// TestScaleCapacity: a scale above what the live hosts can run is refused
// with the numbers unless --force; with --force the count is written,
// tickets only for the free slots, and ps, tickets and scale say what
// waits and why. A count above the fleet's max-scale is refused even with
// --force, and config max-scale sets that bound.
// ok2 runs the CLI, which must succeed, and returns its output.
func (h *harness) ok2(args ...string) result {
	h.t.Helper()
	res := h.run(args...)
	if res.code != 0 {
		h.t.Fatalf("visor %s: exit %d, stderr %q", strings.Join(args, " "), res.code, res.stderr)
	}
	return res
}

func TestScaleCapacity(t *testing.T) {
	h := newHarness(t)
	setupWeb(h)
	r := h.registry()
	ctx := testContext(t)
	s, err := r.RegisterHost(ctx, registry.Host{ID: "h1", Capacity: 3}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(testContext(t)) })

	h.ok("scale", "web", "v1", "worker=1")
	h.fails(1, []string{"scale web/v1/web to 5", "above the fleet's capacity", "1 host, 3 slots, 1 taken by other instances: room for 2", "--force"},
		"scale", "web", "v1", "web=5")
	if n, _ := r.CurrentScale(ctx, "web", "v1", "web"); n != 0 {
		t.Fatalf("a refused scale wrote %d", n)
	}
	res := h.run("scale", "web", "v1", "web=5", "--force")
	if res.code != 0 {
		t.Fatalf("scale --force: exit %d, stderr %q", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "web/v1/web: 3 of 5 instances wait: no host has capacity: 1 host, 0/3 slots used, 3 pending") {
		t.Errorf("scale --force stderr %q", res.stderr)
	}
	tickets, err := r.Tickets(ctx)
	if err != nil || len(tickets) != 3 { // worker's one and web's two
		t.Fatalf("tickets after scale --force: %d, %v", len(tickets), err)
	}
	for _, cmd := range [][]string{{"ps"}, {"ps", "web"}, {"tickets"}} {
		res := h.ok2(cmd...)
		if !strings.Contains(res.stderr, "visor: web/v1/web: 2/5 admitted, 3 waiting: no host has capacity") {
			t.Errorf("%v stderr %q, want the waiting scale", cmd, res.stderr)
		}
	}
	res = h.run("scale", "web", "v1", "web=5", "--wait", "--wait-timeout", "1s")
	if !strings.Contains(res.stdout, "web/v1/web 0/5 running (3 waiting: no host has capacity") {
		t.Errorf("scale --wait progress %q", res.stdout)
	}

	h.fails(1, []string{"above the fleet's capacity", "also above the fleet's limit of 10000"}, "scale", "web", "v1", "web=10001", "--force")
	h.ok("config", "max-scale", "4")
	if out := h.ok("config", "max-scale"); out != "max-scale 4\n" {
		t.Errorf("config max-scale = %q", out)
	}
	h.fails(1, []string{"above the fleet's limit of 4"}, "scale", "web", "v1", "worker=5")
	h.fails(2, []string{"not a count"}, "config", "max-scale", "many")
}
