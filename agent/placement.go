package agent

import (
	"context"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/registry"
)

// Placement without a scheduler: every agent sees every untargeted ticket
// and ranks the live hosts for it by weighted rendezvous hashing. The host
// ranked first claims at once (after a jitter of up to ClaimDelay); the
// host ranked k-th waits k * ClaimBackup before it claims, and gives up as
// soon as it sees someone else's claim. All agents rank from the same data
// (the host records in etcd, with the load each host last reported), so
// they agree on who goes first and a burst of tickets spreads over the
// hosts without doomed claim transactions; a host that is gone, full,
// draining or slow is covered by the next one after ClaimBackup.

// loadScale is the reported instance count at which a host's weight has
// halved: a host running loadScale instances wins a third of the tickets
// against an idle one.
const loadScale = 50

// placer ranks this host for tickets and paces its claims: the ticket
// pipeline asks it how long to wait before claiming (waitClaimDelay) and
// tells it of its claims in flight and their round trips.
type placer struct {
	host        string        // this host's id
	claimDelay0 time.Duration // Config.ClaimDelay: jitter of a first-ranked claim
	claimBackup time.Duration // Config.ClaimBackup: wait per rank
	log         hclog.Logger

	peers atomic.Pointer[[]registry.Host] // live hosts, for claim ranks
	// claimLatency is a recent claim round trip in nanoseconds (see
	// noteClaimLatency); claimsInFlight the claims sent, not yet answered.
	claimLatency   atomic.Int64
	claimsInFlight atomic.Int64
}

func newPlacer(cfg Config, log hclog.Logger) *placer {
	return &placer{host: cfg.HostID, claimDelay0: cfg.ClaimDelay, claimBackup: cfg.ClaimBackup, log: log}
}

// setPeers records the live hosts.
func (pl *placer) setPeers(hs []registry.Host) { pl.peers.Store(&hs) }

// watchPeers keeps the placer's peers, the live host records, until ctx
// ends.
func (a *Agent) watchPeers(ctx context.Context) {
	for hs := range a.reg.WatchHosts(ctx) {
		a.place.setPeers(hs)
	}
}

// claimDelay is the wait before claiming ticket t: 0 for a ticket
// targeted at this host, else this host's rank for t times the backup
// step plus a jitter below ClaimDelay. backup reports a rank above 0.
func (pl *placer) claimDelay(t registry.Ticket) (d time.Duration, backup bool) {
	if t.Host != "" {
		return 0, false
	}
	jitter := time.Duration(rendezvous(pl.host, t.ID) % uint64(pl.claimDelay0+1))
	rank := pl.claimRank(t)
	return time.Duration(rank)*pl.backupStep() + jitter, rank > 0
}

// waitClaimDelay waits out j's claim delay: its rank among the hosts for
// the ticket times the backup step, re-checked when the timer fires (the
// rank or the step may have changed); a backup claim is put off while this
// agent's own claims are in flight. False if the wait ended first.
func (pl *placer) waitClaimDelay(j *job) bool {
	seen := time.Now()
	d, backup := pl.claimDelay(j.t)
	wasBackup := backup
	pl.log.Debug("ticket offered", "ticket", j.t.ID, "op", string(j.t.Op), "delay", d, "backup", backup)
	for postponed := 0; d > 0; {
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-j.wait.Done():
			timer.Stop()
			return false
		}
		d, backup = pl.claimDelay(j.t)
		d -= time.Since(seen)
		// A host that ranked first when the ticket came may still be
		// claiming it even if the ranks moved since (a status update
		// changed a weight): a backup stays one.
		if d <= 0 && (backup || wasBackup) && postponed < maxBackupPostpone && pl.claimsInFlight.Load() > 0 {
			d = pl.backupStep() / 2
			postponed++
		}
	}
	return j.wait.Err() == nil
}

// maxBackupPostpone bounds how often a backup claim is put off while this
// agent's own claims are still in flight.
const maxBackupPostpone = 4

// backupStep is how much longer each next-ranked host waits: ClaimBackup,
// or twice the recent claim round trip if that is longer. In a burst of
// tickets etcd is busy and the first-ranked host's claims take longer to
// show; a backup claim sent before they land would only collide with
// them. A waiting host checks the step again when its timer fires, and
// while claims of its own are still in flight (etcd is queueing claims,
// the first-ranked host's too) it puts a backup claim off by another
// half step, at most maxBackupPostpone times.
func (pl *placer) backupStep() time.Duration {
	return max(pl.claimBackup, 2*time.Duration(pl.claimLatency.Load()))
}

// noteClaimLatency keeps a recent claim round trip: it follows a rise at
// once and a fall slowly (a tenth of the way per claim).
func (pl *placer) noteClaimLatency(d time.Duration) {
	for {
		cur := pl.claimLatency.Load()
		next := int64(d)
		if next < cur {
			next = cur - (cur-next)/10
		}
		if pl.claimLatency.CompareAndSwap(cur, next) {
			return
		}
	}
}

// claimRank is how many eligible live hosts rank before this one for t.
// Hosts that already failed t, and hosts at their capacity, are skipped;
// this host always counts as live.
func (pl *placer) claimRank(t registry.Ticket) int {
	var peers []registry.Host
	if p := pl.peers.Load(); p != nil {
		peers = *p
	}
	self := registry.Host{ID: pl.host}
	if i := slices.IndexFunc(peers, func(h registry.Host) bool { return h.ID == pl.host }); i >= 0 {
		self = peers[i]
	}
	mine := placementScore(self, t.ID)
	rank := 0
	for _, h := range peers {
		if h.ID == self.ID || slices.Contains(t.FailedHosts, h.ID) ||
			(h.Capacity > 0 && h.Load.Instances >= h.Capacity) {
			continue
		}
		if sc := placementScore(h, t.ID); sc > mine || (sc == mine && h.ID < self.ID) {
			rank++
		}
	}
	return rank
}

// placementScore is host h's weighted rendezvous score for ticket id:
// -w / ln(u), u uniform in (0, 1] from a hash of host and ticket, w the
// host's weight from its reported load. The highest score goes first, and
// host h ranks first with probability w_h / sum(w).
func placementScore(h registry.Host, id string) float64 {
	u := (float64(rendezvous(h.ID, id)>>11) + 1) / (1 << 53)
	w := 1 / (1 + float64(h.Load.Instances)/loadScale)
	if u >= 1 {
		return math.Inf(1)
	}
	return -w / math.Log(u)
}

// rendezvous hashes a host and a ticket id (FNV-1a over host, a zero
// byte and id, written out so it allocates nothing: it runs for every
// host and every ticket).
func rendezvous(host, ticket string) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for i := 0; i < len(host); i++ {
		h = (h ^ uint64(host[i])) * prime
	}
	h *= prime // the zero byte
	for i := 0; i < len(ticket); i++ {
		h = (h ^ uint64(ticket[i])) * prime
	}
	return mix64(h)
}

// mix64 is a 64-bit finalizer (splitmix64's) that spreads FNV's output
// over all bits, so the top bits used for u are uniform.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
