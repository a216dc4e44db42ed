package registry

import (
	"errors"
	"testing"
	"time"
)

func TestDrain(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	register(t, r, "h1")

	_, err := r.Drain(ctx, "nope", 0)
	mustIs(t, err, ErrNotFound)
	_, err = r.Drain(ctx, "h1", 0)
	mustIs(t, err, ErrLastHost)
	_, err = r.Drain(ctx, "../x", 0)
	mustIs(t, err, ErrInvalid)
	_, err = r.Drain(ctx, "h1", -time.Second)
	mustIs(t, err, ErrInvalid)

	register(t, r, "h2")
	watch := r.WatchDrain(ctx, "h1")
	if v := <-watch; v {
		t.Fatalf("WatchDrain first value = true before any drain")
	}
	d, err := r.Drain(ctx, "h1", time.Minute)
	must(t, err)
	if d.Deadline.Sub(d.Since) != time.Minute {
		t.Fatalf("drain deadline %v since %v", d.Deadline, d.Since)
	}
	if v := <-watch; !v {
		t.Fatalf("WatchDrain did not report the drain")
	}
	hosts, err := r.Hosts(ctx)
	must(t, err)
	for _, h := range hosts {
		if h.Draining != (h.ID == "h1") {
			t.Errorf("host %s draining = %v", h.ID, h.Draining)
		}
	}
	// h2 is now the last host that is not draining.
	_, err = r.Drain(ctx, "h2", 0)
	mustIs(t, err, ErrLastHost)

	must(t, r.Undrain(ctx, "h1"))
	if v := <-watch; v {
		t.Fatalf("WatchDrain did not report the undrain")
	}
	mustIs(t, r.Undrain(ctx, "h1"), ErrNotFound)
}

func TestReplaceInstance(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	h1 := register(t, r, "h1")
	_, old := claimNew(t, r, h1)

	rep, err := r.ReplaceInstance(ctx, old.ID)
	must(t, err)
	if rep.Op != TicketStart || len(rep.FailedHosts) != 1 || rep.FailedHosts[0] != "h1" {
		t.Fatalf("replacement ticket = %+v", rep)
	}
	got, err := r.Instance(ctx, old.ID)
	must(t, err)
	if got.ReplacedBy != rep.Instance {
		t.Fatalf("old instance ReplacedBy = %q, want %q", got.ReplacedBy, rep.Instance)
	}
	nu, err := r.Instance(ctx, rep.Instance)
	must(t, err)
	if nu.Replaces != old.ID || nu.State != InstancePending {
		t.Fatalf("replacement instance = %+v", nu)
	}
	_, err = r.ReplaceInstance(ctx, old.ID)
	mustIs(t, err, ErrExists)

	// The old one no longer counts: scale 1 is already met by the replacement.
	res, err := r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	if len(res.Started)+len(res.Stopped)+len(res.Cancelled) != 0 {
		t.Fatalf("Scale(1) during a replacement changed things: %+v", res)
	}
	// Once the replacement is given up, the old one counts again.
	must(t, r.CancelReplacement(ctx, old.ID))
	res, err = r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	if len(res.Cancelled)+len(res.Stopped) != 1 {
		t.Fatalf("Scale(1) after cancelling the replacement: %+v, want one cancelled or stopped", res)
	}
}

// TestConcurrentDrains: two drains of the last two live hosts at once
// never both succeed.
func TestConcurrentDrains(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	register(t, r, "h1")
	register(t, r, "h2")
	for round := range 20 {
		errs := make(chan error, 2)
		for _, h := range []string{"h1", "h2"} {
			go func() {
				_, err := r.Drain(ctx, h, 0)
				errs <- err
			}()
		}
		ok := 0
		for range 2 {
			switch err := <-errs; {
			case err == nil:
				ok++
			case !errors.Is(err, ErrLastHost):
				t.Fatalf("round %d: drain: %v", round, err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d of 2 concurrent drains succeeded, want 1", round, ok)
		}
		drains, err := r.Drains(ctx)
		must(t, err)
		for h := range drains {
			must(t, r.Undrain(ctx, h))
		}
	}
}
