package registry

import (
	"fmt"
	"sync"
	"testing"

	"github.com/visorhq/visor/internal/embedetcd"
	"github.com/visorhq/visor/internal/etcdtest"
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
	t.Parallel()
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

// etcdLimits are the two kinds of etcd Scale meets: one that takes a
// 130-ticket scale in one transaction (the embedded member's 4096
// operations) and one with etcd's default limit of 128, where Scale falls
// back to transactions of 40.
var etcdLimits = []struct {
	name   string
	maxOps uint
	chunk  int32 // Registry.scaleChunk after a large scale
}{
	{"max-txn-ops=4096", 4096, 0},
	{"max-txn-ops=128", 128, smallScaleChunk},
}

// setupOps is setup with an etcd member accepting at most maxOps
// operations per transaction.
func setupOps(t testing.TB, maxOps uint) *Registry {
	t.Helper()
	c := etcdtest.NewWith(t, func(cfg *embedetcd.Config) { cfg.MaxTxnOps = maxOps })
	return New(c.Client(t), etcdtest.Prefix(t), testLogger(t))
}

func TestScaleLarge(t *testing.T) {
	t.Parallel()
	for _, lim := range etcdLimits {
		t.Run(lim.name, func(t *testing.T) {
			r := setupOps(t, lim.maxOps)
			ctx := testCtx(t)
			seed(t, r, "web", "v1", "worker")
			rev0, err := r.CurrentRevision(ctx)
			must(t, err)
			res, err := r.Scale(ctx, "web", "v1", "worker", 130)
			must(t, err)
			if len(res.Started) != 130 {
				t.Fatalf("started %d", len(res.Started))
			}
			rev1, err := r.CurrentRevision(ctx)
			must(t, err)
			// One transaction is one revision; 40 at a time takes 4.
			want := int64(1)
			if lim.chunk != 0 {
				want = 4
			}
			if rev1-rev0 != want {
				t.Errorf("scale to 130 took %d transactions, want %d", rev1-rev0, want)
			}
			if got := r.scaleChunk.Load(); got != lim.chunk {
				t.Errorf("tickets per transaction after the scale = %d, want %d", got, lim.chunk)
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
		})
	}
}

func TestConcurrentScale(t *testing.T) {
	t.Parallel()
	for _, lim := range etcdLimits {
		t.Run(lim.name, func(t *testing.T) { testConcurrentScale(t, setupOps(t, lim.maxOps)) })
	}
}

func testConcurrentScale(t *testing.T, r *Registry) {
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

	t.Run("large", func(t *testing.T) {
		// Differences above 40: one transaction each, or steps of 40 on
		// an etcd with the default operations limit.
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
