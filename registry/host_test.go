package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// setupWeb is setup with web/v1/worker seeded, and a test context.
func setupWeb(t testing.TB) (*Registry, *clientv3.Client, context.Context) {
	t.Helper()
	r, cli, _ := setup(t)
	seed(t, r, "web", "v1", "worker")
	return r, cli, testCtx(t)
}

func register(t testing.TB, r *Registry, id string) *HostSession {
	t.Helper()
	ctx := testCtx(t)
	s, err := r.RegisterHost(ctx, Host{ID: id, Addr: "127.0.0.1:7070", Labels: map[string]string{"zone": "a"}, Capacity: 1000, Version: "test"}, 10*time.Second)
	if err != nil {
		t.Fatalf("register host %s: %v", id, err)
	}
	t.Cleanup(func() { s.Close(testCtx(t)) })
	return s
}

// startTicket scales app/v1/proc to one more than it counts and returns the new ticket.
func startTicket(t testing.TB, r *Registry, app, proc string) Ticket {
	t.Helper()
	ctx := testCtx(t)
	all, err := r.AppInstances(ctx, app)
	must(t, err)
	n := 0
	for _, in := range all {
		if in.Proc == proc && in.Rev == "v1" && in.counted() {
			n++
		}
	}
	res, err := r.Scale(ctx, app, "v1", proc, n+1)
	must(t, err)
	if len(res.Started) != 1 {
		t.Fatalf("scale to %d started %v", n+1, res.Started)
	}
	tk, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	return tk
}

// claimNew creates a start ticket for web/v1/worker and claims it with s.
func claimNew(t testing.TB, r *Registry, s *HostSession) (Ticket, Instance) {
	t.Helper()
	tk := startTicket(t, r, "web", "worker")
	in, err := s.Claim(testCtx(t), tk)
	must(t, err)
	return tk, in
}

// runNew is claimNew with the instance then running and its start ticket
// done.
func runNew(t testing.TB, r *Registry, s *HostSession) Instance {
	t.Helper()
	tk, in := claimNew(t, r, s)
	in.State = InstanceRunning
	must(t, s.CompleteWith(testCtx(t), tk, in))
	return in
}

func TestHostSession(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	s := register(t, r, "h1")
	if s.ID() != "h1" || s.Lease() == 0 {
		t.Fatalf("session id %q lease %d", s.ID(), s.Lease())
	}
	_, err := r.RegisterHost(ctx, Host{ID: "h1"}, 10*time.Second)
	mustIs(t, err, ErrExists)
	_, err = r.RegisterHost(ctx, Host{ID: "H1"}, time.Second)
	mustIs(t, err, ErrInvalid)

	hosts, err := r.Hosts(ctx)
	must(t, err)
	if len(hosts) != 1 || hosts[0].ID != "h1" || hosts[0].Labels["zone"] != "a" || hosts[0].Lease != int64(s.Lease()) {
		t.Fatalf("hosts = %+v", hosts)
	}
	must(t, s.UpdateHost(ctx, Host{Addr: "127.0.0.1:7070", Load: HostLoad{Load1: 0.5, Instances: 2}}))
	h, err := r.Host(ctx, "h1")
	must(t, err)
	if h.Load.Instances != 2 || h.Load.Load1 != 0.5 {
		t.Errorf("host after update = %+v", h)
	}
	_, err = r.Host(ctx, "h2")
	mustIs(t, err, ErrNotFound)

	// An instance index entry written with the lease disappears with it.
	seed(t, r, "web", "v1", "worker")
	tk := startTicket(t, r, "web", "worker")
	_, err = s.Claim(ctx, tk)
	must(t, err)

	must(t, s.Close(ctx))
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	for _, k := range []string{r.hostKey("h1"), r.claimKey(tk.ID), r.hostInstanceKey("h1", tk.Instance)} {
		resp, err := cli.Get(ctx, k)
		must(t, err)
		if len(resp.Kvs) != 0 {
			t.Errorf("%s survived Close", k)
		}
	}
	// The ticket is free again and the host id can be registered anew.
	s2 := register(t, r, "h1")
	_, err = s2.Claim(ctx, tk)
	must(t, err)
	mustIs(t, s.UpdateHost(ctx, Host{}), ErrLeaseLost)
}

func TestHostLeaseLoss(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)

	t.Run("revoked", func(t *testing.T) {
		s := register(t, r, "revoked")
		_, err := cli.Revoke(ctx, s.Lease())
		must(t, err)
		select {
		case <-s.Done():
		case <-time.After(testtime.Scaled(10 * time.Second)):
			t.Fatal("Done not closed after the lease was revoked")
		}
		tk := startTicket(t, r, "web", "worker")
		_, err = s.Claim(ctx, tk)
		mustIs(t, err, ErrLeaseLost)
		mustIs(t, s.UpdateHost(ctx, Host{}), ErrLeaseLost)
		must(t, s.Close(ctx)) // revoking a lost lease is fine
	})
	t.Run("expired", func(t *testing.T) {
		s, err := r.RegisterHost(ctx, Host{ID: "orphan"}, time.Second)
		must(t, err)
		s.Orphan()
		<-s.Done()
		proctest.WaitFor(t, 15*time.Second, "orphaned host key to expire", func() bool {
			_, err := r.Host(ctx, "orphan")
			return errors.Is(err, ErrNotFound)
		})
		mustIs(t, s.UpdateHost(ctx, Host{}), ErrLeaseLost)
	})
}

func TestClaimLifecycle(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	h1, h2 := register(t, r, "h1"), register(t, r, "h2")

	tk := startTicket(t, r, "web", "worker")
	pending, err := r.Instance(ctx, tk.Instance)
	must(t, err)
	if pending.State != InstancePending || pending.Ticket != tk.ID || pending.Host != "" {
		t.Fatalf("instance before claim = %+v", pending)
	}

	t.Run("stale revision", func(t *testing.T) {
		stale := tk
		stale.ModRevision--
		_, err := h1.Claim(ctx, stale)
		mustIs(t, err, ErrTicketChanged)
	})
	t.Run("unread ticket", func(t *testing.T) {
		_, err := h1.Claim(ctx, Ticket{ID: tk.ID, Instance: tk.Instance})
		mustIs(t, err, ErrInvalid)
	})

	in, err := h1.Claim(ctx, tk)
	must(t, err)
	if in.State != InstanceClaimed || in.Host != "h1" || in.ID != tk.Instance || in.App != "web" {
		t.Fatalf("claimed instance = %+v", in)
	}
	_, err = h2.Claim(ctx, tk)
	mustIs(t, err, ErrClaimed)
	got, err := r.Ticket(ctx, tk.ID)
	must(t, err)
	if got.Holder != "h1" {
		t.Errorf("holder = %q", got.Holder)
	}
	idx, err := cli.Get(ctx, r.hostInstanceKey("h1", tk.Instance))
	must(t, err)
	if len(idx.Kvs) != 1 || clientv3.LeaseID(idx.Kvs[0].Lease) != h1.Lease() {
		t.Fatalf("index entry = %+v", idx.Kvs)
	}
	hts, err := r.HostTickets(ctx, "h1")
	must(t, err)
	if len(hts) != 1 || hts[0].ID != tk.ID {
		t.Errorf("host tickets = %+v", hts)
	}

	// Only the holder moves the instance, along valid transitions.
	mustIs(t, h2.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStarting}), ErrNotHolder)
	mustIs(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceExited + "x"}), ErrTransition)
	mustIs(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceLost}), ErrInvalid)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStarting}))
	mustIs(t, h2.Complete(ctx, tk), ErrNotHolder)

	in.State, in.PID, in.Port = InstanceRunning, 4242, 5000
	must(t, h1.CompleteWith(ctx, tk, in))
	_, err = r.Ticket(ctx, tk.ID)
	mustIs(t, err, ErrNotFound)
	mustIs(t, h1.Complete(ctx, tk), ErrTicketDone)
	_, err = h2.Claim(ctx, tk)
	mustIs(t, err, ErrTicketDone)
	run, err := r.Instance(ctx, in.ID)
	must(t, err)
	if run.State != InstanceRunning || run.PID != 4242 || run.Port != 5000 || run.Host != "h1" {
		t.Fatalf("running instance = %+v", run)
	}

	// Listings by app and host.
	all, err := r.Instances(ctx)
	must(t, err)
	byApp, err := r.AppInstances(ctx, "web")
	must(t, err)
	byHost, err := r.HostInstances(ctx, "h1")
	must(t, err)
	none, err := r.HostInstances(ctx, "h2")
	must(t, err)
	if len(all) != 1 || len(byApp) != 1 || len(byHost) != 1 || byHost[0].ID != in.ID || len(none) != 0 {
		t.Fatalf("instances all=%v app=%v host=%v other=%v", all, byApp, byHost, none)
	}

	// Holder updates keep registry-owned fields, and leave an index entry
	// already on the session's lease untouched.
	code := 0
	before, err := cli.Get(ctx, r.hostInstanceKey("h1", in.ID))
	must(t, err)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceRunning, PID: 4243, Restarts: map[string]int{"fail": 1}}))
	after, err := cli.Get(ctx, r.hostInstanceKey("h1", in.ID))
	must(t, err)
	if len(after.Kvs) != 1 || after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Errorf("index entry rewritten by an update: before %+v, after %+v", before.Kvs, after.Kvs)
	}
	mustIs(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstancePending}), ErrTransition)

	// Restart and signal tickets target the instance's host.
	rt, err := r.CreateTicket(ctx, Ticket{Op: TicketRestart, Instance: in.ID})
	must(t, err)
	if rt.Host != "h1" || rt.App != "web" || rt.Rev != "v1" || rt.Proc != "worker" || rt.MaxAttempts != 3 {
		t.Fatalf("restart ticket = %+v", rt)
	}
	_, err = h2.Claim(ctx, rt)
	mustIs(t, err, ErrInvalid)
	got2, err := h1.Claim(ctx, rt)
	must(t, err)
	if got2.PID != 4243 || got2.Restarts["fail"] != 1 || got2.Ticket != tk.ID {
		t.Errorf("instance returned by claim of restart = %+v", got2)
	}
	must(t, h1.Complete(ctx, rt))
	_, err = r.CreateTicket(ctx, Ticket{Op: TicketSignal, Instance: in.ID})
	mustIs(t, err, ErrInvalid)
	sig, err := r.CreateTicket(ctx, Ticket{Op: TicketSignal, Instance: in.ID, Signal: "hup"})
	must(t, err)
	if sig.Signal != "HUP" {
		t.Errorf("signal = %q", sig.Signal)
	}
	_, err = r.CreateTicket(ctx, Ticket{Op: TicketStart, Instance: in.ID})
	mustIs(t, err, ErrInvalid)
	_, err = r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID, App: "other"})
	mustIs(t, err, ErrInvalid)
	_, err = r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: "web-worker-00000000"})
	mustIs(t, err, ErrNotFound)

	// Stop: the instance stops counting at once; the holder stops it.
	st, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
	must(t, err)
	_, err = r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
	mustIs(t, err, ErrExists)
	_, err = h1.Claim(ctx, st)
	must(t, err)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStopping}))
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceExited, ExitCode: &code, Reason: "stopped"}))
	must(t, h1.Complete(ctx, st))
	done, err := r.Instance(ctx, in.ID)
	must(t, err)
	if done.State != InstanceExited || done.ExitCode == nil || *done.ExitCode != 0 || done.StopTicket != st.ID {
		t.Fatalf("stopped instance = %+v", done)
	}
	idx, err = cli.Get(ctx, r.hostInstanceKey("h1", in.ID))
	must(t, err)
	if len(idx.Kvs) != 0 {
		t.Error("index entry of exited instance remains")
	}
	mustIs(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceRunning}), ErrTransition)
	_, err = r.CreateTicket(ctx, Ticket{Op: TicketRestart, Instance: in.ID})
	mustIs(t, err, ErrInvalid)

	// Garbage collection of terminal instances only.
	must(t, r.DeleteInstance(ctx, in.ID))
	_, err = r.Instance(ctx, in.ID)
	mustIs(t, err, ErrNotFound)
}

// TestClaimBatch: a batch claims each ticket on its own in one round trip
// per MaxClaimBatch tickets; a lost or bad ticket gets its own error and
// does not hold back the others.
func TestClaimBatch(t *testing.T) {
	t.Parallel()
	r, cli, txns := countingSetup(t, "/etcdserverpb.KV/Txn")
	ctx := testCtx(t)
	h1, h2 := register(t, r, "h1"), register(t, r, "h2")
	_, err := r.Scale(ctx, "web", "v1", "worker", 24)
	must(t, err)
	tks, err := r.Tickets(ctx)
	must(t, err)

	// A clean batch of 20: two transactions, every ticket claimed.
	before := txns.n.Load()
	res := h1.ClaimBatch(ctx, tks[:20])
	if got := txns.n.Load() - before; got != 2 {
		t.Errorf("a batch of 20 sent %d transactions, want 2", got)
	}
	for i, cr := range res {
		must(t, cr.Err)
		if in := cr.Instance; in.ID != tks[i].Instance || in.State != InstanceClaimed || in.Host != "h1" || in.ModRevision == 0 {
			t.Errorf("result %d = %+v", i, in)
		}
	}
	byHost, err := r.HostInstances(ctx, "h1")
	must(t, err)
	if len(byHost) != 20 {
		t.Errorf("h1 has %d instances indexed, want 20", len(byHost))
	}

	// A mixed batch.
	_, err = h2.Claim(ctx, tks[20])
	must(t, err)
	stale := tks[21]
	stale.ModRevision--
	st, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: tks[0].Instance})
	must(t, err)
	other, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: tks[20].Instance})
	must(t, err)
	moved := other // as if read before the instance was on a host
	moved.Host = ""
	batch := []Ticket{tks[20], stale, tks[22], {ID: "../x", Instance: tks[23].Instance, ModRevision: 1},
		tks[22], st, other, tks[23], tks[0], moved}
	before = txns.n.Load()
	res = h1.ClaimBatch(ctx, batch)
	if got := txns.n.Load() - before; got != 2 {
		t.Errorf("a mixed batch sent %d transactions, want 2 (the claims, one read explaining the 4 lost)", got)
	}
	mustIs(t, res[0].Err, ErrClaimed)
	mustIs(t, res[1].Err, ErrTicketChanged)
	must(t, res[2].Err)
	mustIs(t, res[3].Err, ErrInvalid)
	mustIs(t, res[4].Err, ErrInvalid) // tks[22] again
	must(t, res[5].Err)
	if in := res[5].Instance; in.ID != tks[0].Instance || in.StopTicket != st.ID || in.Host != "h1" {
		t.Errorf("stop ticket's claim returned %+v", in)
	}
	mustIs(t, res[6].Err, ErrInvalid) // targets h2
	must(t, res[7].Err)
	must(t, res[8].Err) // h1 holds it since the first batch: a retry succeeds
	if res[8].Instance.ID != tks[0].Instance {
		t.Errorf("retried claim returned %+v", res[8].Instance)
	}
	mustIs(t, res[9].Err, ErrNotHolder) // the instance is on h2
	hts, err := r.HostTickets(ctx, "h1")
	must(t, err)
	if len(hts) != 23 {
		t.Errorf("h1 holds %d tickets, want 23 (20, tks[22], tks[23], the stop)", len(hts))
	}

	// The lease gone: every ticket of the batch says so.
	_, err = cli.Revoke(ctx, h2.Lease())
	must(t, err)
	res = h2.ClaimBatch(ctx, []Ticket{tks[21], other})
	for _, cr := range res {
		mustIs(t, cr.Err, ErrLeaseLost)
	}

	// Bad tickets, and a ticket repeated in a later transaction of the
	// same call.
	badApp, badOp := tks[21], tks[21]
	badApp.App = "web/../x"
	badOp.Op = "bogus"
	batch = []Ticket{tks[21], badApp, badOp}
	for len(batch) < MaxClaimBatch+1 {
		batch = append(batch, Ticket{ID: fmt.Sprintf("Bad%d", len(batch))})
	}
	batch = append(batch, tks[21])
	res = h1.ClaimBatch(ctx, batch)
	must(t, res[0].Err)
	for i := 1; i < len(res); i++ {
		mustIs(t, res[i].Err, ErrInvalid)
	}
}

func TestRelease(t *testing.T) {
	t.Parallel()
	r, _, ctx := setupWeb(t)
	hosts := []*HostSession{register(t, r, "h1"), register(t, r, "h2"), register(t, r, "h3")}
	tk := startTicket(t, r, "web", "worker")

	mustIs(t, hosts[0].Release(ctx, tk, "not mine"), ErrNotHolder)
	for i, h := range hosts {
		cur, err := r.Ticket(ctx, tk.ID)
		must(t, err)
		if cur.Attempts != i {
			t.Fatalf("attempts = %d, want %d", cur.Attempts, i)
		}
		_, err = h.Claim(ctx, cur)
		must(t, err)
		must(t, h.Release(ctx, cur, "no space on "+h.ID()))
		if i < len(hosts)-1 {
			in, err := r.Instance(ctx, tk.Instance)
			must(t, err)
			if in.State != InstancePending || in.Host != "" {
				t.Fatalf("instance after release = %+v", in)
			}
			cur, err = r.Ticket(ctx, tk.ID)
			must(t, err)
			if cur.Holder != "" || len(cur.FailedHosts) != i+1 || cur.FailedHosts[i] != h.ID() || cur.Reasons[i] != "no space on "+h.ID() {
				t.Fatalf("ticket after release = %+v", cur)
			}
		}
	}
	_, err := r.Ticket(ctx, tk.ID)
	mustIs(t, err, ErrNotFound)
	in, err := r.Instance(ctx, tk.Instance)
	must(t, err)
	if in.State != InstanceFailed || in.Reason == "" {
		t.Fatalf("instance after last release = %+v", in)
	}
	// A failed instance no longer counts: scaling to 1 again starts another.
	res, err := r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	if len(res.Started) != 1 || res.Live+res.Pending != 0 {
		t.Errorf("rescale after failure = %+v", res)
	}
}

func TestAdoptAndMarkLost(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	old := register(t, r, "h1")
	tk, in := claimNew(t, r, old)
	in.State = InstanceRunning
	must(t, old.CompleteWith(ctx, tk, in))

	// The agent loses its lease but keeps running the process.
	_, err := cli.Revoke(ctx, old.Lease())
	must(t, err)
	<-old.Done()
	fresh := register(t, r, "h1")
	got, err := fresh.Adopt(ctx, in.ID)
	must(t, err)
	if got.State != InstanceRunning {
		t.Errorf("adopted = %+v", got)
	}
	idx, err := cli.Get(ctx, r.hostInstanceKey("h1", in.ID))
	must(t, err)
	if len(idx.Kvs) != 1 || clientv3.LeaseID(idx.Kvs[0].Lease) != fresh.Lease() {
		t.Fatalf("index after adopt = %+v", idx.Kvs)
	}
	other := register(t, r, "h2")
	_, err = other.Adopt(ctx, in.ID)
	mustIs(t, err, ErrNotHolder)

	// Another new lease: an update before Adopt rebinds the index entry
	// (gone with the old lease) to the new one.
	_, err = cli.Revoke(ctx, fresh.Lease())
	must(t, err)
	<-fresh.Done()
	fresh = register(t, r, "h1")
	must(t, fresh.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceRunning, PID: 7}))
	idx, err = cli.Get(ctx, r.hostInstanceKey("h1", in.ID))
	must(t, err)
	if len(idx.Kvs) != 1 || clientv3.LeaseID(idx.Kvs[0].Lease) != fresh.Lease() {
		t.Fatalf("index after an update with a new lease = %+v", idx.Kvs)
	}

	// The reconciler marks it lost; the holder can no longer move it.
	must(t, r.MarkLost(ctx, in.ID, "host h1 gone"))
	lost, err := r.Instance(ctx, in.ID)
	must(t, err)
	if lost.State != InstanceLost || lost.Reason != "host h1 gone" {
		t.Fatalf("lost = %+v", lost)
	}
	mustIs(t, fresh.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceRunning}), ErrNotHolder)
	_, err = fresh.Adopt(ctx, in.ID)
	mustIs(t, err, ErrNotHolder)
	mustIs(t, r.MarkLost(ctx, in.ID, "again"), ErrTransition)

	// MarkLost on a pending instance also removes its start ticket, so no
	// host resurrects it.
	tk2 := startTicket(t, r, "web", "worker")
	must(t, r.MarkLost(ctx, tk2.Instance, "test"))
	_, err = fresh.Claim(ctx, tk2)
	mustIs(t, err, ErrTicketDone)
	mustIs(t, r.DeleteInstance(ctx, startTicket(t, r, "web", "worker").Instance), ErrInvalid)
}

// TestReclaim: a host that lost its lease mid-start adopts the instance and
// takes its start ticket back without moving the instance back to claimed.
func TestReclaim(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	old := register(t, r, "h1")
	tk := startTicket(t, r, "web", "worker")
	in, err := old.Claim(ctx, tk)
	must(t, err)
	in.State = InstanceStarting
	must(t, old.UpdateInstance(ctx, in))

	_, err = cli.Revoke(ctx, old.Lease())
	must(t, err)
	<-old.Done()
	fresh := register(t, r, "h1")
	other := register(t, r, "h2")
	// Before adoption the index is not on the new lease: refused.
	mustIs(t, fresh.Reclaim(ctx, tk), ErrNotHolder)
	_, err = fresh.Adopt(ctx, in.ID)
	must(t, err)
	must(t, fresh.Reclaim(ctx, tk))
	got, err := r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstanceStarting {
		t.Fatalf("instance after reclaim is %s, want starting", got.State)
	}
	mustIs(t, fresh.Reclaim(ctx, tk), ErrClaimed)
	_, err = other.Claim(ctx, tk)
	mustIs(t, err, ErrClaimed)
	got.State = InstanceRunning
	must(t, fresh.CompleteWith(ctx, tk, got))
	mustIs(t, fresh.Reclaim(ctx, tk), ErrTicketDone)
}

// TestMarkAllLost: a host's instances are marked lost in batches with their
// tickets gone, the scale counts them no more, an instance changed since
// the caller's read is still marked (one by one), and one that became
// terminal or moved to another host meanwhile is left alone.
func TestMarkAllLost(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	h := register(t, r, "h1")
	const n = 40 // more than two transactions' worth
	res, err := r.Scale(ctx, "web", "v1", "worker", n)
	must(t, err)
	if len(res.Started) != n {
		t.Fatalf("scale started %d tickets, want %d", len(res.Started), n)
	}
	ts, err := r.Tickets(ctx)
	must(t, err)
	for _, tk := range ts {
		in, err := h.Claim(ctx, tk)
		must(t, err)
		in.State = InstanceRunning
		must(t, h.CompleteWith(ctx, tk, in))
	}
	read, err := r.HostInstances(ctx, "h1")
	must(t, err)
	if len(read) != n {
		t.Fatalf("h1 has %d instances, want %d", len(read), n)
	}
	// After the read: one instance changes (still running, new revision),
	// one exits.
	changed, exited := read[3], read[20]
	must(t, h.UpdateInstance(ctx, Instance{ID: changed.ID, State: InstanceRunning, PID: 42}))
	must(t, h.UpdateInstance(ctx, Instance{ID: exited.ID, State: InstanceStopping}))
	must(t, h.UpdateInstance(ctx, Instance{ID: exited.ID, State: InstanceExited}))
	// And one is on another host now (as after a claim over a dead one).
	moved := read[30]
	cur, err := r.Instance(ctx, moved.ID)
	must(t, err)
	cur.Host = "h2"
	_, err = cli.Txn(ctx).Then(clientv3.OpPut(r.instanceKey(moved.ID), encode(cur)),
		clientv3.OpDelete(r.hostInstanceKey("h1", moved.ID))).Commit()
	must(t, err)

	marked, err := r.MarkAllLost(ctx, read, "host h1 gone")
	must(t, err)
	if marked != n-2 {
		t.Errorf("marked %d, want %d", marked, n-2)
	}
	all, err := r.Instances(ctx)
	must(t, err)
	for _, in := range all {
		want := InstanceLost
		switch in.ID {
		case exited.ID:
			want = InstanceExited
		case moved.ID:
			want = InstanceRunning
		}
		if in.State != want {
			t.Errorf("instance %s is %s, want %s", in.ID, in.State, want)
		}
		if in.State == InstanceLost && in.Reason != "host h1 gone" {
			t.Errorf("instance %s reason %q", in.ID, in.Reason)
		}
	}
	idx, err := cli.Get(ctx, r.hostInstanceKey("h1", ""), clientv3.WithPrefix(), clientv3.WithCountOnly())
	must(t, err)
	if idx.Count != 0 {
		t.Errorf("h1 index still lists %d instances", idx.Count)
	}
	// Only the moved one counts now: a rescale asks for n-1 replacements.
	again, err := r.Rescale(ctx, "web", "v1", "worker")
	must(t, err)
	if again.Live != 1 || len(again.Started) != n-1 {
		t.Errorf("rescale after loss: live %d, started %d; want 1 and %d", again.Live, len(again.Started), n-1)
	}
	// Bad input is reported, the rest still marked.
	_, err = r.MarkAllLost(ctx, []Instance{{ID: "../x", State: InstanceRunning, ModRevision: 1}}, "x")
	mustIs(t, err, ErrInvalid)
	_, err = r.MarkAllLost(ctx, []Instance{{ID: moved.ID, Host: "../h", State: InstanceRunning, ModRevision: 1}}, "x")
	mustIs(t, err, ErrInvalid)
}

// TestWatchHosts: the set is sent as listed, then after a join, a status
// update and a leave; instance index entries and undecodable records do
// not disturb it.
func TestWatchHosts(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	h1 := register(t, r, "h1")
	ch := r.WatchHosts(ctx)
	next := func(want ...string) []Host {
		t.Helper()
		for {
			select {
			case hs, ok := <-ch:
				if !ok {
					t.Fatal("WatchHosts closed")
				}
				var ids []string
				for _, h := range hs {
					ids = append(ids, h.ID)
				}
				if fmt.Sprint(ids) == fmt.Sprint(want) {
					return hs
				}
			case <-ctx.Done():
				t.Fatalf("no host set %v", want)
			}
		}
	}
	next("h1")
	h2 := register(t, r, "h2")
	next("h1", "h2")
	// A claim writes an index entry under hosts/h2/; a bad record is skipped.
	seed(t, r, "web", "v1", "worker")
	_, err := h2.Claim(ctx, startTicket(t, r, "web", "worker"))
	must(t, err)
	_, err = cli.Put(ctx, r.hostKey("bad"), "{not json")
	must(t, err)
	must(t, h2.UpdateHost(ctx, Host{Load: HostLoad{Instances: 7}}))
	hs := next("h1", "h2")
	for len(hs) != 2 || hs[1].Load.Instances != 7 {
		hs = next("h1", "h2")
	}
	must(t, h1.Close(ctx))
	next("h2")
}

// rpcCounter counts the client's unary RPCs of one method (such as
// "/etcdserverpb.KV/Range", the reads) through a gRPC interceptor.
type rpcCounter struct {
	method string
	n      atomic.Int64
}

func (c *rpcCounter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method == c.method {
		c.n.Add(1)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// countingSetup is setup on a client whose RPCs of method are counted,
// with web/v1/worker seeded.
func countingSetup(t testing.TB, method string) (*Registry, *clientv3.Client, *rpcCounter) {
	c := etcdtest.New(t)
	counter := &rpcCounter{method: method}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithUnaryInterceptor(counter.intercept)}})
	must(t, err)
	t.Cleanup(func() { cli.Close() })
	r := New(cli, etcdtest.Prefix(t), testLogger(t))
	seed(t, r, "web", "v1", "worker")
	return r, cli, counter
}

// TestHolderWritesWithoutReads: the holder's state writes start from the
// record the session last wrote, so an update after a claim reads nothing;
// a record someone else changed meanwhile costs one read, and what they
// wrote survives.
func TestHolderWritesWithoutReads(t *testing.T) {
	t.Parallel()
	r, _, reads := countingSetup(t, "/etcdserverpb.KV/Range")
	ctx := testCtx(t)
	h := register(t, r, "h1")

	tk, in := claimNew(t, r, h)
	before := reads.n.Load()
	must(t, h.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStarting, PID: 10}))
	in.State, in.PID = InstanceRunning, 10
	must(t, h.CompleteWith(ctx, tk, in))
	must(t, h.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceBackoff, PID: 10}))
	if got := reads.n.Load() - before; got != 0 {
		t.Errorf("holder writes after a claim read etcd %d times, want 0", got)
	}

	// Someone else writes the record (a stop ticket names it).
	st, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
	must(t, err)
	before = reads.n.Load()
	must(t, h.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceRunning, PID: 11}))
	if got := reads.n.Load() - before; got != 1 {
		t.Errorf("update over a changed record read etcd %d times, want 1", got)
	}
	got, err := r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstanceRunning || got.PID != 11 || got.StopTicket != st.ID {
		t.Fatalf("instance after the update = %+v, want running, pid 11, stop ticket %s", got, st.ID)
	}

	// Marked lost by the reconciler: the remembered copy does not let the
	// holder write over it.
	must(t, r.MarkLost(ctx, in.ID, "test"))
	mustIs(t, h.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceRunning, PID: 12}), ErrNotHolder)
	got, err = r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstanceLost {
		t.Fatalf("lost instance overwritten: %+v", got)
	}
}

// TestReleaseRetires: a released start is offered again only while its
// instance waits for it; an instance that ended, whose stop was requested
// or that a drain replaced does not go back to pending.
func TestReleaseRetires(t *testing.T) {
	t.Parallel()
	r, _, ctx := setupWeb(t)
	h1 := register(t, r, "h1")
	gone := func(id string) {
		t.Helper()
		_, err := r.Ticket(ctx, id)
		mustIs(t, err, ErrNotFound)
	}

	// Ended meanwhile: left as it is.
	tk, in := claimNew(t, r, h1)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceFailed, Reason: "boom"}))
	must(t, h1.Release(ctx, tk, "start failed"))
	got, err := r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstanceFailed || got.Reason != "boom" {
		t.Errorf("released ended instance = %s (%s), want failed (boom)", got.State, got.Reason)
	}
	gone(tk.ID)

	// Stop requested: exits unstarted, the unclaimed stop ticket goes too.
	tk, in = claimNew(t, r, h1)
	st, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
	must(t, err)
	must(t, h1.Release(ctx, tk, "artifact unreachable"))
	got, err = r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstanceExited || !strings.Contains(got.Reason, "stop was requested") {
		t.Errorf("released instance with a stop = %s (%s), want exited, not started", got.State, got.Reason)
	}
	gone(tk.ID)
	gone(st.ID)

	// Stop requested and its ticket held: the holder completes it.
	tk, in = claimNew(t, r, h1)
	st, err = r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
	must(t, err)
	_, err = h1.Claim(ctx, st)
	must(t, err)
	must(t, h1.Release(ctx, tk, "artifact unreachable"))
	gone(tk.ID)
	must(t, h1.Complete(ctx, st))

	// Replaced by a drain: exits unstarted; the replacement carries the link.
	tk, in = claimNew(t, r, h1)
	rt, err := r.ReplaceInstance(ctx, in.ID)
	must(t, err)
	must(t, h1.Release(ctx, tk, "shutting down"))
	got, err = r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstanceExited || !strings.Contains(got.Reason, "replaced by "+rt.Instance) {
		t.Errorf("released replaced instance = %s (%s)", got.State, got.Reason)
	}
	h2 := register(t, r, "h2")
	rep, err := h2.Claim(ctx, rt)
	must(t, err)
	if rep.Replaces != in.ID {
		t.Errorf("replacement claimed with Replaces %q, want %q", rep.Replaces, in.ID)
	}
}

// TestClaimAfterLeaseLoss: a start ticket whose claim died with its host's
// lease is claimed over the stored instance record, keeping what others
// wrote; one whose stop was requested meanwhile is withdrawn instead of
// started uncounted.
func TestClaimAfterLeaseLoss(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	h1, h2 := register(t, r, "h1"), register(t, r, "h2")

	// Nothing written meanwhile: h2 takes it over.
	tk, in := claimNew(t, r, h1)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStarting}))
	cur, err := r.Instance(ctx, in.ID)
	must(t, err)
	cur.Restarts = map[string]int{"manual": 2} // as if written by another party
	_, err = cli.Put(ctx, r.instanceKey(in.ID), encode(cur))
	must(t, err)
	h3 := register(t, r, "h3")
	_, err = cli.Revoke(ctx, h3.Lease()) // not h1: keep h1 for the next case
	must(t, err)
	_, err = cli.Revoke(ctx, h1.Lease())
	must(t, err)
	got, err := h2.Claim(ctx, tk)
	must(t, err)
	if got.Host != "h2" || got.State != InstanceClaimed || got.Restarts["manual"] != 2 {
		t.Errorf("claim over a dead claim = %+v", got)
	}
	byHost, err := r.HostInstances(ctx, "h2")
	must(t, err)
	if len(byHost) != 1 || byHost[0].ID != in.ID {
		t.Errorf("h2 index = %v", byHost)
	}

	// Stop requested while claimed by a host that then died: withdrawn.
	h4 := register(t, r, "h4")
	tk, in = claimNew(t, r, h4)
	st, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
	must(t, err)
	_, err = cli.Revoke(ctx, h4.Lease())
	must(t, err)
	_, err = h2.Claim(ctx, tk)
	mustIs(t, err, ErrTicketDone)
	final, err := r.Instance(ctx, in.ID)
	must(t, err)
	if final.State != InstanceExited || final.Host != "h4" {
		t.Errorf("withdrawn instance = %s on %q (%s)", final.State, final.Host, final.Reason)
	}
	for _, id := range []string{tk.ID, st.ID} {
		_, err = r.Ticket(ctx, id)
		mustIs(t, err, ErrNotFound)
	}
	res, err := r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	if res.Live != 1 || len(res.Started) != 0 {
		t.Errorf("scale after = %+v; want the one instance on h2 live, nothing started", res)
	}
}

// TestUnclaim: a host that stops before doing a ticket's work gives it
// back without an attempt counted against it.
func TestUnclaim(t *testing.T) {
	t.Parallel()
	r, _, ctx := setupWeb(t)
	h1 := register(t, r, "h1")
	tk, in := claimNew(t, r, h1)
	must(t, h1.Unclaim(ctx, tk, "shutting down"))
	cur, err := r.Ticket(ctx, tk.ID)
	must(t, err)
	if cur.Holder != "" || cur.Attempts != 0 || len(cur.FailedHosts) != 0 || cur.Excludes("h1") {
		t.Fatalf("ticket after unclaim = %+v", cur)
	}
	got, err := r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstancePending || got.Host != "" || got.ModRevision != cur.ModRevision {
		t.Fatalf("instance after unclaim = %+v (ticket revision %d)", got, cur.ModRevision)
	}
	// The same host may take it again.
	again, err := h1.Claim(ctx, cur)
	must(t, err)
	if again.State != InstanceClaimed || again.Host != "h1" {
		t.Errorf("claim after unclaim = %+v", again)
	}
}

func TestTicketExcludes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		t    Ticket
		host string
		want bool
	}{
		{Ticket{FailedHosts: []string{"h1"}}, "h1", true},
		{Ticket{FailedHosts: []string{"h1"}}, "h2", false},
		{Ticket{Host: "h1", FailedHosts: []string{"h1"}}, "h1", false}, // targeted: only h1 can
		{Ticket{}, "h1", false},
	} {
		if got := c.t.Excludes(c.host); got != c.want {
			t.Errorf("%+v.Excludes(%q) = %v, want %v", c.t, c.host, got, c.want)
		}
	}
}

// TestClaimOverCorruptInstance: a restart ticket whose instance record no
// longer decodes is not left held by the claimer.
func TestClaimOverCorruptInstance(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	h1 := register(t, r, "h1")
	in := runNew(t, r, h1)
	rt, err := r.CreateTicket(ctx, Ticket{Op: TicketRestart, Instance: in.ID})
	must(t, err)
	_, err = cli.Put(ctx, r.instanceKey(in.ID), "{not json")
	must(t, err)
	_, err = h1.Claim(ctx, rt)
	mustIs(t, err, ErrCorrupt)
	got, err := r.Ticket(ctx, rt.ID)
	must(t, err)
	if got.Holder != "" {
		t.Errorf("ticket held by %q after a claim over a corrupt instance", got.Holder)
	}
}

// TestCompleteDecidesOnStoredRecord: a completion the remembered copy
// would refuse is decided on the stored record instead, as updates are.
func TestCompleteDecidesOnStoredRecord(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	h1 := register(t, r, "h1")
	tk, in := claimNew(t, r, h1)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStopping})) // remembered: stopping
	cur, err := r.Instance(ctx, in.ID)
	must(t, err)
	cur.State = InstanceRunning // written by someone else meanwhile
	_, err = cli.Put(ctx, r.instanceKey(in.ID), encode(cur))
	must(t, err)
	in.State, in.PID = InstanceRunning, 7
	must(t, h1.CompleteWith(ctx, tk, in))
	got, err := r.Instance(ctx, in.ID)
	must(t, err)
	if got.State != InstanceRunning || got.PID != 7 {
		t.Errorf("completed instance = %s pid %d", got.State, got.PID)
	}
}

// TestClaimOverNeedsHolderGone: a start ticket whose claim is gone but
// whose instance is still indexed on a live host (it came back and adopted
// it) is left to that host; one whose instance record is gone is deleted.
func TestClaimOverNeedsHolderGone(t *testing.T) {
	t.Parallel()
	r, cli, ctx := setupWeb(t)
	h1, h2 := register(t, r, "h1"), register(t, r, "h2")
	tk, in := claimNew(t, r, h1)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceStarting, PID: 42}))
	_, err := cli.Delete(ctx, r.claimKey(tk.ID)) // as if its lease had ended; the index entry is live
	must(t, err)
	_, err = h2.Claim(ctx, tk)
	mustIs(t, err, ErrTicketChanged)
	got, err := r.Instance(ctx, in.ID)
	must(t, err)
	if got.Host != "h1" || got.State != InstanceStarting {
		t.Errorf("instance after a refused claim over = %s on %q", got.State, got.Host)
	}

	orphan := startTicket(t, r, "web", "worker")
	_, err = cli.Delete(ctx, r.instanceKey(orphan.Instance))
	must(t, err)
	_, err = h2.Claim(ctx, orphan)
	mustIs(t, err, ErrTicketDone)
	_, err = r.Ticket(ctx, orphan.ID)
	mustIs(t, err, ErrNotFound)
}

// TestClaimOfMootTicket: a stop ticket whose instance ended before anyone
// claimed it (its index entry went with the end) is deleted by the claim
// that finds it so, instead of staying unclaimable.
func TestClaimOfMootTicket(t *testing.T) {
	t.Parallel()
	r, _, ctx := setupWeb(t)
	h1 := register(t, r, "h1")
	in := runNew(t, r, h1)
	st, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
	must(t, err)
	must(t, h1.UpdateInstance(ctx, Instance{ID: in.ID, State: InstanceExited, Reason: "crashed"}))
	_, err = h1.Claim(ctx, st)
	mustIs(t, err, ErrTicketDone)
	_, err = r.Ticket(ctx, st.ID)
	mustIs(t, err, ErrNotFound)
}
