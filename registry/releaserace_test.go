package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestClaimedStartGoesBackOnce is the fault suite's "illegal transition
// claimed to pending" (non_leader_agent_killed under load: agents whose
// session ended released their claimed starts, and the suite's check of
// every instance's consecutive states refused the release's write). On a
// real etcd it plays the writers of one start ticket's instance: the
// holder dies (lease revoked) and its late release is refused; two hosts
// race to claim the ticket over it; the winner's Release and Unclaim race
// on the same claim; then a holder that reported starting dies and its
// start is claimed over; and a holder whose start is past claimed may
// neither release it to pending nor write pending itself. It asserts the
// instance's history as a watch sees it, write by write: the exact states
// and hosts, one pending write (the one release that went through), and
// every step legal by ValidTransition.
func TestClaimedStartGoesBackOnce(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	h1, h2, h3 := register(t, r, "h1"), register(t, r, "h2"), register(t, r, "h3")
	tk, in := claimNew(t, r, h1)
	from := in.ModRevision

	// h1 dies holding the claim: its release comes too late and writes
	// nothing.
	_, err := cli.Revoke(ctx, h1.Lease())
	must(t, err)
	mustIs(t, h1.Unclaim(ctx, tk, "lease lost"), ErrNotHolder)

	// Two hosts race to claim the start over the dead holder.
	cur, err := r.Ticket(ctx, tk.ID)
	must(t, err)
	won := race(t, func(s *HostSession) error { _, err := s.Claim(ctx, cur); return err }, h2, h3)
	if len(won) != 1 {
		t.Fatalf("claims over the dead holder that went through: %v, want one", won)
	}
	w := won[0]
	other := h2
	if w == h2 {
		other = h3
	}

	// The winner's Release and Unclaim race on its one claim: exactly one
	// puts the instance back, the other finds the claim gone.
	n := 0
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errs[0] = w.Release(ctx, cur, "start failed") })
	wg.Go(func() { errs[1] = w.Unclaim(ctx, cur, "shutting down") })
	wg.Wait()
	for _, err := range errs {
		switch {
		case err == nil:
			n++
		case !errors.Is(err, ErrNotHolder):
			t.Fatalf("losing release: %v, want ErrNotHolder", err)
		}
	}
	if n != 1 {
		t.Fatalf("releases that went through: %d (%v), want 1", n, errs)
	}
	got, err := r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstancePending || got.Host != "" {
		t.Fatalf("instance after release = %s on %q", got.State, got.Host)
	}

	// A holder that reported starting dies; another host claims over it.
	h4 := register(t, r, "h4")
	cur, err = r.Ticket(ctx, tk.ID)
	must(t, err)
	_, err = h4.Claim(ctx, cur)
	must(t, err)
	must(t, h4.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStarting}))
	_, err = cli.Revoke(ctx, h4.Lease())
	must(t, err)
	mustIs(t, h4.Release(ctx, cur, "lease lost"), ErrNotHolder)
	cur, err = r.Ticket(ctx, tk.ID)
	must(t, err)
	_, err = other.Claim(ctx, cur)
	must(t, err)
	// Back to pending is the release's move, never the holder's own.
	mustIs(t, other.UpdateInstance(ctx, Instance{ID: in.ID, State: InstancePending}), ErrTransition)

	// Past claimed, the holder's process exists: neither a release nor
	// the holder itself may put the instance back to pending.
	must(t, other.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStarting}))
	mustIs(t, other.Release(ctx, cur, "start failed"), ErrTransition)
	mustIs(t, other.UpdateInstance(ctx, Instance{ID: in.ID, State: InstancePending}), ErrTransition)
	if _, err := r.Ticket(ctx, tk.ID); err != nil {
		t.Fatalf("ticket after a refused release: %v", err)
	}

	last, err := r.Instance(ctx, in.ID)
	must(t, err)
	want := []string{"claimed@h1", "claimed@" + w.ID(), "pending@", "claimed@h4", "starting@h4",
		"claimed@" + other.ID(), "starting@" + other.ID()}
	hist := instanceHistory(t, cli, r.instanceKey(in.ID), in.ID, from, last.ModRevision)
	var seen []string
	for i, h := range hist {
		seen = append(seen, fmt.Sprintf("%s@%s", h.State, h.Host))
		if i > 0 {
			if err := ValidTransition(hist[i-1].State, h.State); err != nil {
				t.Errorf("write at revision %d: %v", h.ModRevision, err)
			}
		}
	}
	if strings.Join(seen, " ") != strings.Join(want, " ") {
		t.Errorf("instance history = %v, want %v", seen, want)
	}
}

// race runs f on each session at once and returns the sessions for which
// it succeeded; the others must have lost the claim race.
func race(t *testing.T, f func(*HostSession) error, ss ...*HostSession) []*HostSession {
	t.Helper()
	errs := make([]error, len(ss))
	var wg sync.WaitGroup
	for i, s := range ss {
		wg.Go(func() { errs[i] = f(s) })
	}
	wg.Wait()
	var won []*HostSession
	for i, err := range errs {
		switch {
		case err == nil:
			won = append(won, ss[i])
		case !errors.Is(err, ErrClaimed) && !errors.Is(err, ErrTicketChanged):
			t.Fatalf("%s: %v, want ErrClaimed or ErrTicketChanged", ss[i].ID(), err)
		}
	}
	return won
}

// instanceHistory returns every write of instance id's key from revision
// from through to, as a watch from from delivers them.
func instanceHistory(t *testing.T, cli *clientv3.Client, key, id string, from, to int64) []Instance {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var out []Instance
	for wr := range cli.Watch(ctx, key, clientv3.WithRev(from)) {
		must(t, wr.Err())
		for _, ev := range wr.Events {
			in, err := decodeInstance(ev.Kv, id)
			must(t, err)
			out = append(out, in)
			if ev.Kv.ModRevision >= to {
				return out
			}
		}
	}
	t.Fatalf("watch of %s ended before revision %d: %v", key, to, ctx.Err())
	return nil
}
