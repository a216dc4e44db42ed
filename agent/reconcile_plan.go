package agent

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/visorhq/visor/registry"
)

// A reconciler pass is three steps, as Nomad's scheduler reconciler does
// it: read a snapshot of the registry (reconcile_apply.go, readSnapshot),
// compute a plan from it and from what the leader remembers (planPass,
// here: a pure function, no I/O, no clock), and apply the plan
// (reconciler.apply), each multi-key change in one registry transaction.
// The plan decides what to change; the registry calls that apply it still
// compare what they change against what they read, so a plan made from a
// snapshot that has aged meanwhile writes nothing wrong: RescaleIn
// re-counts inside its own transaction and never reverts a concurrent
// Scale.

// snapshot is what one pass reads, all of it before it decides anything.
type snapshot struct {
	now       time.Time
	hosts     []registry.Host // live hosts whose records decode
	badHosts  []string        // ids of live hosts whose records do not decode
	instances []registry.Instance
	drains    map[string]registry.Drain // by host; empty when none or unreadable
	// scales is every desired count; scalesOK is false when they could not
	// be read: then nothing is rescaled, reported stuck or collected.
	scales   []registry.ScaleEntry
	scalesOK bool
	// statuses holds the scale keys ("app/rev/proc") with a stored
	// registry.ScaleStatus; statusesOK is false when they could not all be
	// read, and every scale is then rescaled.
	statuses   map[string]bool
	statusesOK bool
	// tickets is every ticket; ticketsOK is false when they could not be
	// read (no ticket is then reported stuck).
	tickets   []registry.Ticket
	ticketsOK bool
	// deploys are the active deployments (deploy.go), planned only when
	// deploysOK and scalesOK.
	deploys   []registry.Deployment
	deploysOK bool
}

// memory is what the leader keeps from pass to pass; it lives only while
// it leads.
type memory struct {
	hostGone map[string]time.Time // host -> when its lease was first seen gone
	fixes    map[string]fixState  // scale key -> backoff of repeated repairs
	stuck    map[string]bool      // ticket ids reported as having no eligible host
	waiting  map[string]string    // scale key -> last reported reason it waits for capacity
}

func newMemory() memory {
	return memory{hostGone: map[string]time.Time{}, fixes: map[string]fixState{}, stuck: map[string]bool{},
		waiting: map[string]string{}}
}

// fixState tracks repeated repairs of one scale entry.
type fixState struct {
	next  time.Time     // no repair before this
	delay time.Duration // next backoff step
	last  time.Time     // last repair
}

// plan is what one pass changes, in the order apply does it.
type plan struct {
	// hostGone replaces memory.hostGone: hosts seen alive are dropped,
	// hosts of instances newly seen without a lease are added.
	hostGone map[string]time.Time
	// lost are the hosts gone past the grace, with their instances to mark
	// lost (one MarkAllLost each), sorted by host.
	lost []lostHost
	// drain moves instances off draining hosts.
	drain []drainStep
	// rescale are the scale entries to re-apply with RescaleIn: those
	// that drifted (or may have: see needsRescale) and are not backing
	// off.
	rescale []rescale
	// stable are scale keys whose repairs have stopped long enough: their
	// backoff is forgotten.
	stable []string
	// stuck are the unclaimed tickets that no live host may take, not
	// reported before.
	stuck []registry.Ticket
	// gc are the terminal instances older than gcAge, to delete.
	gc []string
	// deploys are the next steps of the active deployments.
	deploys []deployPlan
	// next is when the next pass is due.
	next time.Duration
}

// lostHost is a host gone past the grace and its instances to mark lost.
type lostHost struct {
	host      string
	instances []registry.Instance
	reason    string
}

// drainOp is what a drain does to one instance.
type drainOp int

const (
	// drainReplace starts a replacement (registry.ReplaceInstance).
	drainReplace drainOp = iota
	// drainStop stops the old instance: its replacement runs, or the
	// drain's deadline passed (late).
	drainStop
	// drainCancel gives the replacement up (it ended without running or
	// is gone), so the next pass replaces again.
	drainCancel
)

func (op drainOp) String() string {
	switch op {
	case drainReplace:
		return "replace"
	case drainStop:
		return "stop"
	case drainCancel:
		return "cancel"
	}
	return fmt.Sprintf("drainOp(%d)", int(op))
}

// drainStep is one drain action on an instance of a draining host.
type drainStep struct {
	op   drainOp
	in   registry.Instance
	late bool // drainStop: the deadline passed before the replacement ran
}

// rescale is one scale entry to re-apply, with the drift the snapshot
// shows (desired minus counted instances, once the plan's lost marks and
// given-up replacements are applied). RescaleIn counts again in its own
// transaction; drift only explains why the entry is re-applied.
type rescale struct {
	entry registry.ScaleEntry
	drift int
}

// scaleKey names a scale entry in memory and logs.
func scaleKey(app, rev, proc string) string { return app + "/" + rev + "/" + proc }

// planPass computes what one pass changes from s and m. It is pure: it
// reads m, never changes it, and takes the time from s.now.
func planPass(s snapshot, m memory, cfg reconcileConfig) plan {
	p := plan{next: cfg.interval}
	alive := aliveHosts(s)
	p.hostGone = make(map[string]time.Time, len(m.hostGone))
	for h, t := range m.hostGone {
		if !alive[h] {
			p.hostGone[h] = t
		}
	}
	p.planLost(s, alive, cfg.lostGrace)
	p.planDrain(s)
	if !s.scalesOK {
		p.next = min(p.next, 2*time.Second)
		return p
	}
	p.planScales(s, m)
	p.planDeploys(s)
	if s.ticketsOK {
		for _, t := range s.tickets {
			if t.Holder == "" && !m.stuck[t.ID] && len(t.FailedHosts) > 0 && eligibleHosts(t, s.hosts) == 0 {
				p.stuck = append(p.stuck, t)
			}
		}
	}
	for _, in := range s.instances {
		if in.State.Terminal() && s.now.Sub(in.Since) > gcAge {
			p.gc = append(p.gc, in.ID)
		}
	}
	return p
}

// aliveHosts returns the hosts with a key: those listed, and those whose
// record does not decode (its key exists, so, bound to a lease or not,
// its host is not known to be gone and its instances are not lost).
func aliveHosts(s snapshot) map[string]bool {
	alive := make(map[string]bool, len(s.hosts)+len(s.badHosts))
	for _, h := range s.hosts {
		alive[h.ID] = true
	}
	for _, id := range s.badHosts {
		alive[id] = true
	}
	return alive
}

// planLost finds the instances of hosts gone longer than grace. A host is
// gone from when the leader first saw it so (a HostLeft event, or a pass
// finding its instances without a host key); never earlier: a store
// outage or a short partition is not host death. Pending and claimed
// instances are left to their tickets (a claim dies with its holder's
// lease), terminal ones are done.
func (p *plan) planLost(s snapshot, alive map[string]bool, grace time.Duration) {
	byHost := map[string][]registry.Instance{}
	for _, in := range s.instances {
		if in.Host == "" || alive[in.Host] || in.State.Terminal() || in.State == registry.InstancePending ||
			in.State == registry.InstanceClaimed {
			continue
		}
		gone, seen := p.hostGone[in.Host]
		if !seen {
			p.hostGone[in.Host] = s.now
			gone = s.now
		}
		if wait := grace - s.now.Sub(gone); wait > 0 {
			p.next = min(p.next, wait+50*time.Millisecond)
			continue
		}
		byHost[in.Host] = append(byHost[in.Host], in)
	}
	hosts := make([]string, 0, len(byHost))
	for h := range byHost {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		reason := fmt.Sprintf("host %s gone for %s", h, s.now.Sub(p.hostGone[h]).Round(time.Second))
		p.lost = append(p.lost, lostHost{host: h, instances: byHost[h], reason: reason})
	}
}

// planDrain moves the live instances of draining hosts: each gets a
// replacement (a start ticket the draining host may not claim, the old one
// no longer counted), and once the replacement runs, or the drain's
// deadline passes, a stop ticket for the old one. A replacement that ended
// without running is given up, and the next pass tries again. A deadline
// still ahead makes the next pass due when it passes.
func (p *plan) planDrain(s snapshot) {
	if len(s.drains) == 0 {
		return
	}
	byID := make(map[string]registry.Instance, len(s.instances))
	for _, in := range s.instances {
		byID[in.ID] = in
	}
	for _, in := range s.instances {
		d, draining := s.drains[in.Host]
		if !draining || !in.State.Live() || in.StopTicket != "" {
			continue
		}
		if in.ReplacedBy == "" {
			p.drain = append(p.drain, drainStep{op: drainReplace, in: in})
			continue
		}
		rep, ok := byID[in.ReplacedBy]
		late := !d.Deadline.IsZero() && !s.now.Before(d.Deadline)
		switch {
		case ok && rep.State == registry.InstanceRunning, late:
			p.drain = append(p.drain, drainStep{op: drainStop, in: in, late: late})
		case !ok || rep.State.Terminal():
			p.drain = append(p.drain, drainStep{op: drainCancel, in: in})
		case !d.Deadline.IsZero():
			p.next = min(p.next, d.Deadline.Sub(s.now)+50*time.Millisecond)
		}
	}
}

// planScales picks the scale entries to re-apply: not while a repair
// backs off (the next pass is then due when it ends), and only those that
// need it (needsRescale). An entry in place whose last repair is older
// than maxFixBackoff is stable again.
func (p *plan) planScales(s snapshot, m memory) {
	have := p.counted(s)
	for _, sc := range s.scales {
		key := scaleKey(sc.App, sc.Rev, sc.Proc)
		f, fixing := m.fixes[key]
		if fixing && s.now.Before(f.next) {
			p.next = min(p.next, f.next.Sub(s.now))
			continue
		}
		drift := sc.Desired - have[key]
		_, waiting := m.waiting[key]
		if drift != 0 || waiting || !s.statusesOK || s.statuses[key] {
			p.rescale = append(p.rescale, rescale{entry: sc, drift: drift})
			continue
		}
		if fixing && s.now.Sub(f.last) > maxFixBackoff {
			p.stable = append(p.stable, key)
		}
	}
}

// counted counts, by scale key, the instances the registry counts toward
// their scale (live, not stopping, not being replaced: see
// registry.Instance's ReplacedBy and StopTicket), as they will be once the
// plan's lost marks and given-up replacements are written. Like
// RescaleIn, it counts only instances whose id starts with their app and
// process type (the registry's instance ids do). A re-apply decided on a
// count that has aged writes nothing wrong; one skipped on an aged count
// is made by the pass that the change's registry event brings.
func (p *plan) counted(s snapshot) map[string]int {
	lost := map[string]bool{}
	for _, l := range p.lost {
		for _, in := range l.instances {
			lost[in.ID] = true
		}
	}
	recount := map[string]bool{}
	for _, d := range p.drain {
		if d.op == drainCancel {
			recount[d.in.ID] = true
		}
	}
	out := map[string]int{}
	for _, in := range s.instances {
		if !in.State.Live() || in.StopTicket != "" || (in.ReplacedBy != "" && !recount[in.ID]) || lost[in.ID] ||
			!strings.HasPrefix(in.ID, in.App+"-"+in.Proc+"-") {
			continue
		}
		out[scaleKey(in.App, in.Rev, in.Proc)]++
	}
	return out
}

// rescaleOutcome is what a re-applied scale entry's result changed in
// memory, for apply to report.
type rescaleOutcome int

const (
	rescaleInPlace  rescaleOutcome = iota // nothing written, nothing to report
	rescaleWaits                          // some instances wait for capacity (newly, or for a new reason)
	rescaleAdmitted                       // every instance that waited is admitted
	rescaleRepaired                       // drift repaired
	rescaleBacksOff                       // drift repaired again soon after the last repair: backing off
)

// rescaled records in m the result of re-applying the scale entry key at
// now and returns what to report. Tickets admitted as slots free up are
// not failing replacements and get no backoff; repairs that keep coming
// back mean replacements keep failing: each one soon after the last
// doubles the wait before the next (up to maxFixBackoff) instead of
// hot-looping.
func (m memory) rescaled(key string, res registry.ScaleResult, now time.Time) rescaleOutcome {
	reason, wasWaiting := m.waiting[key]
	out := rescaleInPlace
	switch {
	case res.Waiting > 0 && reason != res.Reason:
		m.waiting[key] = res.Reason
		out = rescaleWaits
	case res.Waiting == 0 && wasWaiting:
		delete(m.waiting, key)
		out = rescaleAdmitted
	}
	if res.Waiting > 0 || wasWaiting {
		return out
	}
	f, fixing := m.fixes[key]
	if len(res.Started)+len(res.Stopped)+len(res.Cancelled) == 0 {
		if fixing && now.Sub(f.last) > maxFixBackoff {
			delete(m.fixes, key) // stable again
		}
		return rescaleInPlace
	}
	out = rescaleRepaired
	switch {
	case !fixing:
		f = fixState{delay: time.Second}
	case now.Sub(f.last) < 2*f.delay:
		f.delay = min(2*f.delay, maxFixBackoff)
		out = rescaleBacksOff
	}
	f.last = now
	f.next = now.Add(f.delay)
	m.fixes[key] = f
	return out
}
