package agent

import (
	"fmt"
	"hash/fnv"
	"testing"

	"github.com/visorhq/visor/registry"
)

// TestRendezvousIsFNV: the hand-written hash is FNV-1a of host, 0, ticket.
func TestRendezvousIsFNV(t *testing.T) {
	for _, c := range [][2]string{{"h1", "t1"}, {"", ""}, {"host-a", "18ea82efea82d706b00807fe"}} {
		h := fnv.New64a()
		h.Write([]byte(c[0]))
		h.Write([]byte{0})
		h.Write([]byte(c[1]))
		if got, want := rendezvous(c[0], c[1]), mix64(h.Sum64()); got != want {
			t.Errorf("rendezvous(%q, %q) = %x, want %x", c[0], c[1], got, want)
		}
	}
}

// TestClaimRanks: for every ticket the agents agree on the order, exactly
// one ranks first; tickets spread over equal hosts about evenly and favour
// lightly loaded ones; failed and full hosts are skipped.
func TestClaimRanks(t *testing.T) {
	peers := []registry.Host{
		{ID: "a"}, {ID: "b"}, {ID: "c", Load: registry.HostLoad{Instances: 100}},
		{ID: "full", Capacity: 5, Load: registry.HostLoad{Instances: 5}},
	}
	agents := map[string]*placer{}
	for _, h := range peers {
		a := &placer{host: h.ID}
		a.setPeers(peers)
		agents[h.ID] = a
	}
	first := map[string]int{}
	const n = 6000
	for i := range n {
		tk := registry.Ticket{ID: fmt.Sprintf("ticket-%d", i)}
		ranks := map[int]string{}
		for id, a := range agents {
			if id == "full" {
				continue // it does not claim (eligible checks its capacity)
			}
			r := a.claimRank(tk)
			if other, dup := ranks[r]; dup {
				t.Fatalf("ticket %s: %s and %s both rank %d", tk.ID, id, other, r)
			}
			ranks[r] = id
		}
		if ranks[0] == "" {
			t.Fatalf("ticket %s: nobody ranks first: %v", tk.ID, ranks)
		}
		first[ranks[0]]++
	}
	// Weights 1, 1, 1/3 (100 instances): shares 3/7, 3/7, 1/7.
	for id, want := range map[string]float64{"a": 3.0 / 7, "b": 3.0 / 7, "c": 1.0 / 7} {
		if got := float64(first[id]) / n; got < want-0.03 || got > want+0.03 {
			t.Errorf("host %s ranks first for %.3f of tickets, want about %.3f", id, got, want)
		}
	}
	// A host that failed a ticket is skipped by the others.
	tk := registry.Ticket{ID: "x"}
	var top string
	for id, a := range agents {
		if id != "full" && a.claimRank(tk) == 0 {
			top = id
		}
	}
	tk.FailedHosts = []string{top}
	for id, a := range agents {
		if id != top && id != "full" && a.claimRank(tk) > 1 {
			t.Errorf("with %s failed, %s ranks %d, want 0 or 1", top, id, a.claimRank(tk))
		}
	}
}
