package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

func TestBadInput(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	h := register(t, r, "h1")
	before := keyCount(t, cli, r.Prefix())

	badNames := map[string]string{
		"dotdot":    "../x",
		"empty":     "",
		"upper":     "Web",
		"300 chars": strings.Repeat("a", 300),
		"slash":     "a/b",
		"space":     "a b",
		"leading -": "-a",
	}
	for name, bad := range badNames {
		t.Run(name, func(t *testing.T) {
			ops := map[string]func() error{
				"register app": func() error { _, err := r.RegisterApp(ctx, App{Name: bad}); return err },
				"app":          func() error { _, err := r.App(ctx, bad); return err },
				"unregister":   func() error { return r.UnregisterApp(ctx, bad, true) },
				"set env":      func() error { return r.SetEnv(ctx, bad, map[string]string{"A": "1"}) },
				"env":          func() error { _, err := r.Env(ctx, bad); return err },
				"register rev": func() error {
					_, err := r.RegisterRevision(ctx, Revision{App: "web", Name: bad, Dir: "/srv"})
					return err
				},
				"set proc":    func() error { _, err := r.SetProcType(ctx, ProcType{App: "web", Name: bad}); return err },
				"remove proc": func() error { return r.RemoveProcType(ctx, "web", bad) },
				"scale app":   func() error { _, err := r.Scale(ctx, bad, "v1", "worker", 1); return err },
				"scale rev":   func() error { _, err := r.Scale(ctx, "web", bad, "worker", 1); return err },
				"scale proc":  func() error { _, err := r.Scale(ctx, "web", "v1", bad, 1); return err },
				"host":        func() error { _, err := r.RegisterHost(ctx, Host{ID: bad}, time.Second); return err },
				"instance":    func() error { _, err := r.Instance(ctx, bad); return err },
				"ticket":      func() error { _, err := r.Ticket(ctx, bad); return err },
				"host insts":  func() error { _, err := r.HostInstances(ctx, bad); return err },
			}
			for op, f := range ops {
				err := f()
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("%s(%q): %v, want ErrInvalid", op, bad, err)
					continue
				}
				if bad != "" && !strings.Contains(err.Error(), short(bad)) {
					t.Errorf("%s: error %q does not name the value", op, err)
				}
			}
		})
	}

	t.Run("unknown refs", func(t *testing.T) {
		for what, f := range map[string]func() error{
			"app":  func() error { _, err := r.Scale(ctx, "nope", "v1", "worker", 1); return err },
			"rev":  func() error { _, err := r.Scale(ctx, "web", "v9", "worker", 1); return err },
			"proc": func() error { _, err := r.Scale(ctx, "web", "v1", "nope", 1); return err },
		} {
			err := f()
			mustIs(t, err, ErrNotFound)
			if !strings.Contains(err.Error(), what) {
				t.Errorf("error %q does not name the %s", err, what)
			}
		}
	})
	t.Run("negative scale", func(t *testing.T) {
		_, err := r.Scale(ctx, "web", "v1", "worker", -1)
		mustIs(t, err, ErrInvalid)
	})
	t.Run("bad sha256", func(t *testing.T) {
		_, err := r.RegisterRevision(ctx, Revision{App: "web", Name: "v2", ArtifactURL: "file:///a.tar.gz", SHA256: "deadbeef"})
		mustIs(t, err, ErrInvalid)
		if !strings.Contains(err.Error(), "sha256") {
			t.Errorf("error %q does not name sha256", err)
		}
	})
	if after := keyCount(t, cli, r.Prefix()); after != before {
		t.Fatalf("bad input wrote: %d keys before, %d after", before, after)
	}

	t.Run("undecodable values", func(t *testing.T) {
		put := func(k, v string) {
			t.Helper()
			_, err := cli.Put(ctx, r.Prefix()+k, v)
			must(t, err)
		}
		put("apps/broken", "{not json")
		put("instances/web-worker-bad", `{"state":"dancing"}`)
		put("tickets/0000000000000000bad", `{"op":"explode"}`)
		put("apps/web/revs/v9", `[]`)
		put("apps/web/scale/v1/broken", `many`)

		apps, err := r.Apps(ctx)
		mustIs(t, err, ErrCorrupt)
		if !strings.Contains(err.Error(), "apps/broken") || len(apps) != 1 || apps[0].Name != "web" {
			t.Errorf("apps = %+v, %v", apps, err)
		}
		_, err = r.App(ctx, "broken")
		mustIs(t, err, ErrCorrupt)
		_, err = r.Instance(ctx, "web-worker-bad")
		mustIs(t, err, ErrCorrupt)
		if !strings.Contains(err.Error(), "dancing") {
			t.Errorf("error %q does not name the bad state", err)
		}
		_, err = r.Instances(ctx)
		mustIs(t, err, ErrCorrupt)
		_, err = r.Tickets(ctx)
		mustIs(t, err, ErrCorrupt)
		_, err = r.Revisions(ctx, "web")
		mustIs(t, err, ErrCorrupt)
		_, err = r.Scales(ctx, "web")
		mustIs(t, err, ErrCorrupt)
		_, err = h.Claim(ctx, Ticket{ID: "0000000000000000bad", Instance: "x", ModRevision: 1})
		if err == nil {
			t.Error("claim of a corrupt ticket succeeded")
		}
		// Scale skips what it cannot read and still works.
		res, err := r.Scale(ctx, "web", "v1", "worker", 1)
		must(t, err)
		if len(res.Started) != 1 {
			t.Errorf("scale with corrupt neighbours = %+v", res)
		}
		// A stored count that does not decode is not re-applied as 0.
		tickets := keyCount(t, cli, r.ticketsDir())
		for _, v := range []string{"3\n", "-2"} {
			put("apps/web/scale/v1/worker", v)
			_, err = r.Rescale(ctx, "web", "v1", "worker")
			mustIs(t, err, ErrCorrupt)
			if !strings.Contains(err.Error(), "scale/v1/worker") {
				t.Errorf("rescale error %q does not name the key", err)
			}
			if n := keyCount(t, cli, r.ticketsDir()); n != tickets {
				t.Errorf("rescale over a corrupt count left %d tickets, want the %d from before", n, tickets)
			}
		}
		_, err = r.Scale(ctx, "web", "v1", "worker", 1) // a Scale overwrites it
		must(t, err)
		_, err = r.Rescale(ctx, "web", "v1", "worker")
		must(t, err)
		// Also when it has nothing else to do (0 wanted, 0 there).
		_, err = r.Scale(ctx, "web", "v1", "worker", 0)
		must(t, err)
		put("apps/web/scale/v1/worker", "abc")
		_, err = r.Scale(ctx, "web", "v1", "worker", 0)
		must(t, err)
		_, err = r.Rescale(ctx, "web", "v1", "worker")
		must(t, err)
	})
}

// collect reads from ch until cond says stop or the deadline passes.
func collect[T any](t *testing.T, ch <-chan T, d time.Duration, stop func([]T) bool) []T {
	t.Helper()
	var got []T
	d = testtime.Scaled(d)
	timer := time.NewTimer(d)
	defer timer.Stop()
	for !stop(got) {
		select {
		case v, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed after %d values", len(got))
			}
			got = append(got, v)
		case <-timer.C:
			t.Fatalf("timed out after %s with %d values", d, len(got))
		}
	}
	return got
}

func TestWatchTickets(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	h1, h2 := register(t, r, "h1"), register(t, r, "h2")

	// Two tickets exist before the watch: one claimed, one free.
	res, err := r.Scale(ctx, "web", "v1", "worker", 2)
	must(t, err)
	first, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	in, err := h2.Claim(ctx, first)
	must(t, err)
	in.State = InstanceRunning
	must(t, h2.CompleteWith(ctx, first, in))
	second, err := r.Ticket(ctx, res.Started[1])
	must(t, err)
	_, err = h2.Claim(ctx, second)
	must(t, err)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := r.WatchTickets(wctx, "h1")

	// A bad value is reported once, then the watch goes on.
	_, err = cli.Put(ctx, r.ticketKey("0000000000000000bad"), "garbage")
	must(t, err)
	got := collect(t, ch, 10*time.Second, func(evs []TicketEvent) bool { return len(evs) == 1 })
	if got[0].Err == nil || !errors.Is(got[0].Err, ErrCorrupt) {
		t.Fatalf("first event = %+v, want a decode error", got[0])
	}

	// A new ticket appears; a restart ticket targeted at h2 does not.
	res, err = r.Scale(ctx, "web", "v1", "worker", 3)
	must(t, err)
	_, err = r.CreateTicket(ctx, Ticket{Op: TicketRestart, Instance: in.ID})
	must(t, err)
	got = collect(t, ch, 10*time.Second, func(evs []TicketEvent) bool { return len(evs) == 1 })
	if got[0].Ticket.ID != res.Started[0] || got[0].Deleted || got[0].Ticket.ModRevision == 0 {
		t.Fatalf("event = %+v, want new ticket %s", got[0], res.Started[0])
	}
	third := got[0].Ticket

	// h1 claims it (a Claimed event naming h1). h2's lease dies: its claim
	// on the second ticket vanishes and the ticket is offered again, and
	// nothing else.
	_, err = h1.Claim(ctx, third)
	must(t, err)
	_, err = cli.Revoke(ctx, h2.Lease())
	must(t, err)
	got = collect(t, ch, 10*time.Second, func(evs []TicketEvent) bool {
		return len(evs) > 0 && evs[len(evs)-1].Ticket.ID == second.ID && !evs[len(evs)-1].Claimed
	})
	var offers []TicketEvent
	for _, ev := range got {
		if ev.Claimed {
			if ev.Ticket.ID != third.ID || ev.Ticket.Holder != "h1" {
				t.Fatalf("claimed event = %+v, want %s held by h1", ev, third.ID)
			}
			continue
		}
		offers = append(offers, ev)
	}
	last := got[len(got)-1]
	if len(offers) != 1 || last.Deleted || last.Err != nil {
		t.Fatalf("events = %+v, want only %s offered again", got, second.ID)
	}
	if _, err := h1.Claim(ctx, last.Ticket); err != nil {
		t.Fatalf("claim of released ticket: %v", err)
	}
	must(t, h1.Complete(ctx, last.Ticket))
	got = collect(t, ch, 10*time.Second, func(evs []TicketEvent) bool {
		// (the Claimed event of h1's claim comes first)
		return len(evs) > 0 && evs[len(evs)-1].Deleted
	})
	if got[len(got)-1].Ticket.ID != second.ID {
		t.Fatalf("deleted event = %+v", got[len(got)-1])
	}
	// A completion deletes the claim and the ticket together: the ticket
	// is not offered again on the way.
	for _, ev := range got {
		if !ev.Claimed && !ev.Deleted {
			t.Fatalf("completed ticket offered again: %+v", ev)
		}
	}

	cancel()
	for range ch {
	}
}

func TestWatchTicketsCompacted(t *testing.T) {
	t.Parallel()
	r, cli, _ := setupOwn(t) // compaction would break others' watches
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	_, err := r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	rev, err := r.CurrentRevision(ctx)
	must(t, err)
	_, err = cli.Compact(ctx, rev)
	must(t, err)
	// A watch from a compacted revision ends quietly so that run re-lists.
	ch := make(chan TicketEvent, 8)
	w := ticketWatch{r: r, host: "h1", ch: ch, reported: map[string]bool{}}
	done := make(chan bool, 1)
	go func() { done <- w.watch(ctx, 2) }()
	select {
	case <-done:
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("watch from a compacted revision did not end")
	}
	if len(ch) != 0 {
		t.Errorf("compaction reported as %+v", <-ch)
	}
	// WatchEvents reports the compaction and resumes from the compact
	// revision.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := collect(t, r.WatchEvents(wctx, 2), 10*time.Second, func(evs []Event) bool { return len(evs) == 1 })
	mustIs(t, evs[0].Err, ErrCompacted)
	if evs[0].Revision != rev-1 {
		t.Errorf("compaction event at revision %d, want %d: resuming after it must not skip the compact revision", evs[0].Revision, rev-1)
	}
}

func TestWatchEvents(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	start, err := r.CurrentRevision(ctx)
	must(t, err)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := r.WatchEvents(wctx, start+1)

	seed(t, r, "web", "v1", "worker")
	must(t, r.SetEnv(ctx, "web", map[string]string{"A": "1"}))
	h := register(t, r, "h1")
	res, err := r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	tk, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	in, err := h.Claim(ctx, tk)
	must(t, err)
	_, err = cli.Put(ctx, r.instanceKey("web-worker-bad"), "{")
	must(t, err)
	in.State = InstanceRunning
	must(t, h.CompleteWith(ctx, tk, in))
	must(t, h.UpdateHost(ctx, Host{Addr: "x"}))
	tk2, err := r.CreateTicket(ctx, Ticket{Op: TicketRestart, Instance: in.ID})
	must(t, err)
	_, err = h.Claim(ctx, tk2)
	must(t, err)
	must(t, h.Release(ctx, tk2, "busy"))
	tk3, err := r.CreateTicket(ctx, Ticket{Op: TicketSignal, Signal: "USR1", Instance: in.ID})
	must(t, err)
	_, err = h.Claim(ctx, tk3)
	must(t, err)
	must(t, h.Close(ctx))

	want := []EventType{AppChanged, RevChanged, ProcChanged, EnvChanged, HostJoined,
		ScaleChanged, RevChanged, TicketCreated, InstanceChanged, // scale up (its first: releases v1)
		TicketClaimed, InstanceChanged, // claim
		InstanceChanged,                          // the bad one
		TicketDone, InstanceChanged, HostChanged, // complete, update host
		TicketCreated, TicketClaimed, TicketReleased, // restart ticket
		TicketCreated, TicketClaimed, // signal ticket
		HostLeft, TicketReleased} // close: host gone, claim of tk3 freed (either order)
	var got []Event
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range got {
				t.Logf("event %+v", e)
			}
		}
	})
	got = collect(t, ch, 15*time.Second, func(evs []Event) bool { got = evs; return len(evs) >= len(want) })
	var types []EventType
	for _, e := range got {
		types = append(types, e.Type)
	}
	n := len(want)
	if types[n-1] < types[n-2] {
		types[n-1], types[n-2] = types[n-2], types[n-1]
	}
	if strings.Join(evStrings(types), ",") != strings.Join(evStrings(want), ",") {
		t.Fatalf("event types\n got %v\nwant %v", types, want)
	}
	bad := 0
	for _, e := range got {
		if e.Err != nil {
			bad++
			mustIs(t, e.Err, ErrCorrupt)
		}
		if e.Revision <= start {
			t.Errorf("event %+v before the start revision %d", e, start)
		}
	}
	if bad != 1 {
		t.Errorf("%d events with errors, want 1", bad)
	}
	claimedEv := got[9]
	if claimedEv.Ticket != tk.ID || claimedEv.Host != "h1" {
		t.Errorf("claimed event = %+v", claimedEv)
	}
	runEv := got[13]
	if runEv.State != InstanceRunning || runEv.App != "web" || runEv.Instance != in.ID {
		t.Errorf("instance event = %+v", runEv)
	}

	// The same history, read back with Events: whole, and cut at a
	// revision.
	hist, err := r.Events(ctx, start+1, 0)
	must(t, err)
	key := func(e Event) string { return fmt.Sprintf("%s@%d:%s", e.Type, e.Revision, e.Key) }
	if len(hist) != len(got) {
		t.Fatalf("Events returned %d events, the watch %d", len(hist), len(got))
	}
	for i := range got {
		if key(hist[i]) != key(got[i]) {
			t.Errorf("event %d: Events %s, watch %s", i, key(hist[i]), key(got[i]))
		}
	}
	cut := got[10].Revision
	part, err := r.Events(ctx, start+1, cut)
	must(t, err)
	if len(part) == 0 || part[len(part)-1].Revision != cut || len(part) >= len(got) {
		t.Errorf("Events up to %d: %d events, last at %d", cut, len(part), part[len(part)-1].Revision)
	}
	_, err = r.Events(ctx, 0, 0)
	mustIs(t, err, ErrInvalid)

	// Resume from the middle: the same events from there on.
	cancel()
	for range ch {
	}
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	resumed := collect(t, r.WatchEvents(rctx, got[11].Revision), 10*time.Second, func(evs []Event) bool {
		return len(evs) >= len(got)-11
	})
	for i, e := range resumed {
		if e.Type != got[11+i].Type || e.Revision != got[11+i].Revision {
			t.Fatalf("resumed event %d = %+v, want %+v", i, e, got[11+i])
		}
	}
}

func evStrings(ts []EventType) []string {
	var s []string
	for _, t := range ts {
		s = append(s, string(t))
	}
	return s
}

// FuzzIsName checks the hand-written name matcher against the documented
// regular expression it replaces on the hot path.
func FuzzIsName(f *testing.F) {
	for _, s := range []string{"", "a", "web", "a.b-c", "-a", ".a", "A", "a/b", "a b", "../x", "0-9", "a..", "é", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := isName(s), nameRE.MatchString(s); got != want {
			t.Fatalf("isName(%q) = %v, nameRE says %v", s, got, want)
		}
	})
}

// TestEventsEndsWhenTheLastRevisionsAreNotOurs: Events reads up to the
// store's current revision; when the revisions at the end were written
// outside the prefix (another user of the same etcd) no event of ours
// ends the read, and a progress notification must. etcd drops a progress
// request sent while the watch still replays history, so Events asks
// again until one comes (it hung until its context ended, seen on the
// shared test etcd).
func TestEventsEndsWhenTheLastRevisionsAreNotOurs(t *testing.T) {
	r, cli, _ := setupOwn(t)
	ctx := testCtx(t)
	start, err := r.CurrentRevision(ctx)
	must(t, err)
	_, err = r.RegisterApp(ctx, App{Name: "mine"})
	must(t, err)
	// Enough history outside the prefix that the watch is still replaying
	// it when Events first asks for progress.
	for i := range 3000 {
		_, err := cli.Put(ctx, fmt.Sprintf("/someone-else/%d", i), strings.Repeat("x", 256))
		must(t, err)
	}
	rctx, cancel := context.WithTimeout(ctx, testtime.Scaled(20*time.Second))
	defer cancel()
	evs, err := r.Events(rctx, start+1, 0)
	must(t, err)
	if len(evs) != 1 || evs[0].Type != AppChanged || evs[0].App != "mine" {
		t.Fatalf("events = %+v; want the one app_changed of app mine", evs)
	}
}
