package agent

import (
	"testing"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// roomSignalled reports whether ad's room channel holds a signal (and
// takes it).
func roomSignalled(ad *admission) bool {
	select {
	case <-ad.room():
		return true
	default:
		return false
	}
}

// TestAdmissionBookkeeping drives the capacity bookkeeping through a start's
// life without etcd or processes: reservations count against the slots
// until the supervisor's first report takes over, a terminal report frees
// the slot and signals room, and settle ends a reservation only when no
// report is to come.
func TestAdmissionBookkeeping(t *testing.T) {
	ad := newAdmission(2, registry.HostResources{}, 0)
	r := reservation{}
	for _, id := range []string{"i1", "i2"} {
		if ok, why := ad.reserve(id, r); !ok {
			t.Fatalf("reserve %s refused: %s", id, why)
		}
	}
	if ok, why := ad.reserve("i3", r); ok || why != "all 2 slots used" {
		t.Fatalf("third reserve = %v %q, want refused for slots", ok, why)
	}
	if ad.fits(r) {
		t.Fatal("fits with every slot reserved")
	}
	if n := ad.liveCount(); n != 2 {
		t.Fatalf("liveCount = %d, want 2", n)
	}

	// i1's start went through: the supervisor reports it running.
	ad.noteState("i1", supervisor.Status{ID: "i1", State: supervisor.StateRunning})
	ad.settle("i1", true)
	if n := ad.liveCount(); n != 2 {
		t.Fatalf("liveCount after i1 runs = %d, want 2", n)
	}
	// i2's start is in the supervisor's hands but not reported yet: settle
	// keeps its reservation (the report will end it).
	ad.settle("i2", true)
	if n := ad.liveCount(); n != 2 || roomSignalled(ad) {
		t.Fatalf("settle before the report freed room (liveCount %d)", n)
	}
	ad.noteState("i2", supervisor.Status{ID: "i2", State: supervisor.StateStarting})

	// i1 ends: its slot frees and the ticket loop is told.
	ad.noteState("i1", supervisor.Status{ID: "i1", State: supervisor.StateExited})
	if !roomSignalled(ad) {
		t.Fatal("no room signal after an instance ended")
	}
	if !ad.fits(r) || ad.liveCount() != 1 {
		t.Fatalf("after i1 ended: fits %v, liveCount %d", ad.fits(r), ad.liveCount())
	}

	// A start that failed before the supervisor had it: settle frees it.
	if ok, _ := ad.reserve("i4", r); !ok {
		t.Fatal("reserve i4 refused")
	}
	ad.settle("i4", false)
	if !roomSignalled(ad) || ad.liveCount() != 1 {
		t.Fatalf("settle of a failed start: liveCount %d", ad.liveCount())
	}
	// A claim lost: unreserve frees it.
	if ok, _ := ad.reserve("i5", r); !ok {
		t.Fatal("reserve i5 refused")
	}
	ad.unreserve("i5")
	if !roomSignalled(ad) || ad.liveCount() != 1 {
		t.Fatalf("unreserve: liveCount %d", ad.liveCount())
	}
}

// TestAdmissionTakeFitting: skipped start tickets come back oldest first,
// only as many as fit (each counted against the ones before it), those the
// host failed are dropped, and draining drops them all.
func TestAdmissionTakeFitting(t *testing.T) {
	const mem = 100 << 20
	ad := newAdmission(0, registry.HostResources{MemoryBytes: 250 << 20}, mem)
	for _, tk := range []registry.Ticket{
		{ID: "t3", Op: registry.TicketStart},
		{ID: "t1", Op: registry.TicketStart},
		{ID: "t2", Op: registry.TicketStart, FailedHosts: []string{"h"}},
		{ID: "t4", Op: registry.TicketStart},
	} {
		ad.skip(tk)
	}
	got := ad.takeFitting("h", func() bool { return false })
	if len(got) != 2 || got[0].ID != "t1" || got[1].ID != "t3" {
		t.Fatalf("takeFitting = %v, want t1, t3 (t2 failed here, t4 does not fit after them)", ids(got))
	}
	ad.unskip("t-none") // unknown ids are fine
	if got := ad.takeFitting("h", func() bool { return true }); len(got) != 0 {
		t.Fatalf("draining: takeFitting = %v, want none", ids(got))
	}
	if got := ad.takeFitting("h", func() bool { return false }); len(got) != 0 {
		t.Fatalf("after draining dropped them: takeFitting = %v, want none", ids(got))
	}
}

func ids(ts []registry.Ticket) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.ID)
	}
	return out
}
