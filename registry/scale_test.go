package registry

import (
	"fmt"
	"sync"
	"testing"
)

// counts returns the counted (live, no stop ticket) instances of
// app/v1/proc and the start tickets among them still unclaimed.
func counts(t testing.TB, r *Registry, app, proc string) (counted, pendingStarts int) {
	t.Helper()
	ctx := testCtx(t)
	s, err := r.scaleSnapshot(ctx, app, "v1", proc)
	must(t, err)
	return len(s.live) + len(s.pending), len(s.pending)
}

func TestScale(t *testing.T) {
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	h := register(t, r, "h1")

	n, err := r.CurrentScale(ctx, "web", "v1", "worker")
	must(t, err)
	if n != 0 {
		t.Fatalf("initial scale = %d", n)
	}
	res, err := r.Scale(ctx, "web", "v1", "worker", 4)
	must(t, err)
	if res.Desired != 4 || len(res.Started) != 4 || res.Live != 0 || res.Pending != 0 {
		t.Fatalf("scale up = %+v", res)
	}
	n, err = r.CurrentScale(ctx, "web", "v1", "worker")
	must(t, err)
	if n != 4 {
		t.Fatalf("scale = %d", n)
	}
	// Scaling to the same count is a no-op.
	res, err = r.Scale(ctx, "web", "v1", "worker", 4)
	must(t, err)
	if len(res.Started)+len(res.Stopped)+len(res.Cancelled) != 0 || res.Pending != 4 {
		t.Fatalf("rescale to same = %+v", res)
	}

	// Claim the two oldest tickets and run one of them.
	tickets, err := r.Tickets(ctx)
	must(t, err)
	if len(tickets) != 4 {
		t.Fatalf("tickets = %d", len(tickets))
	}
	for i, tk := range tickets {
		if tk.Op != TicketStart || tk.App != "web" || tk.Host != "" || (i > 0 && tk.ID <= tickets[i-1].ID) {
			t.Fatalf("ticket %d = %+v", i, tk)
		}
	}
	running, err := h.Claim(ctx, tickets[0])
	must(t, err)
	running.State = InstanceRunning
	must(t, h.CompleteWith(ctx, tickets[0], running))
	claimed, err := h.Claim(ctx, tickets[1])
	must(t, err)

	// Down to 3 cancels the newest pending ticket.
	res, err = r.Scale(ctx, "web", "v1", "worker", 3)
	must(t, err)
	if len(res.Cancelled) != 1 || res.Cancelled[0] != tickets[3].ID || len(res.Stopped) != 0 || res.Live != 2 || res.Pending != 2 {
		t.Fatalf("scale to 3 = %+v", res)
	}
	_, err = r.Instance(ctx, tickets[3].Instance)
	mustIs(t, err, ErrNotFound)

	// Down to 1 cancels the last pending ticket, then stops the claimed
	// (not yet running) instance before the running one.
	res, err = r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	if len(res.Cancelled) != 1 || res.Cancelled[0] != tickets[2].ID || len(res.Stopped) != 1 {
		t.Fatalf("scale to 1 = %+v", res)
	}
	stop, err := r.Ticket(ctx, res.Stopped[0])
	must(t, err)
	if stop.Op != TicketStop || stop.Instance != claimed.ID || stop.Host != "h1" {
		t.Fatalf("stop ticket = %+v", stop)
	}
	if c, p := counts(t, r, "web", "worker"); c != 1 || p != 0 {
		t.Fatalf("counted %d pending %d, want 1, 0", c, p)
	}

	// Down to 0 stops the running one; a stop ticket is not issued twice.
	res, err = r.Scale(ctx, "web", "v1", "worker", 0)
	must(t, err)
	if len(res.Stopped) != 1 {
		t.Fatalf("scale to 0 = %+v", res)
	}
	stop0, err := r.Ticket(ctx, res.Stopped[0])
	must(t, err)
	if stop0.Instance != running.ID {
		t.Fatalf("second stop for %s, want %s", stop0.Instance, running.ID)
	}
	res, err = r.Scale(ctx, "web", "v1", "worker", 0)
	must(t, err)
	if len(res.Stopped) != 0 {
		t.Fatalf("scale to 0 again = %+v", res)
	}
	scales, err := r.Scales(ctx, "")
	must(t, err)
	if len(scales) != 1 || scales[0] != (ScaleEntry{App: "web", Rev: "v1", Proc: "worker", Desired: 0}) {
		t.Errorf("scales = %+v", scales)
	}
}

func TestScaleLarge(t *testing.T) {
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	res, err := r.Scale(ctx, "web", "v1", "worker", 130)
	must(t, err)
	if len(res.Started) != 130 {
		t.Fatalf("started %d", len(res.Started))
	}
	if c, p := counts(t, r, "web", "worker"); c != 130 || p != 130 {
		t.Fatalf("counted %d pending %d", c, p)
	}
	res, err = r.Scale(ctx, "web", "v1", "worker", 5)
	must(t, err)
	if len(res.Cancelled) != 125 {
		t.Fatalf("cancelled %d", len(res.Cancelled))
	}
	if c, _ := counts(t, r, "web", "worker"); c != 5 {
		t.Fatalf("counted %d", c)
	}
}

func TestConcurrentScale(t *testing.T) {
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	h := register(t, r, "h1")
	// Some instances already exist, one running, so scalers also stop.
	_, err := r.Scale(ctx, "web", "v1", "worker", 3)
	must(t, err)
	tickets, err := r.Tickets(ctx)
	must(t, err)
	in, err := h.Claim(ctx, tickets[0])
	must(t, err)
	in.State = InstanceRunning
	must(t, h.CompleteWith(ctx, tickets[0], in))

	t.Run("chunked", func(t *testing.T) {
		// Differences above one transaction's worth, applied in steps.
		var wg sync.WaitGroup
		for _, n := range []int{130, 0, 90, 45} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := r.Scale(ctx, "web", "v1", "worker", n); err != nil {
					t.Errorf("scale to %d: %v", n, err)
				}
			}()
		}
		wg.Wait()
		want, err := r.CurrentScale(ctx, "web", "v1", "worker")
		must(t, err)
		if c, _ := counts(t, r, "web", "worker"); c != want {
			t.Fatalf("counted %d, last written scale %d", c, want)
		}
	})
	for round := range 3 {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := r.Scale(ctx, "web", "v1", "worker", (i*5+round)%9); err != nil {
						t.Errorf("scaler %d: %v", i, err)
					}
				}()
			}
			wg.Wait()
			want, err := r.CurrentScale(ctx, "web", "v1", "worker")
			must(t, err)
			if c, _ := counts(t, r, "web", "worker"); c != want {
				t.Fatalf("counted %d instances + pending starts, last written scale %d", c, want)
			}
		})
	}
}
