package agent

import (
	"sort"
	"strconv"
	"sync"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// admission is the host's capacity bookkeeping (see capacity.go for the
// rules): what the instances supervised here reserve, what the starts
// claimed or being claimed here reserve before the supervisor reports
// them, and the start tickets passed over for want of room, to be offered
// again when room frees up. It is fed by supervisor state changes
// (noteState) and by the ticket pipeline (reserve, settle, unreserve), and
// read by the ticket watch (fits, skip, takeFitting) and the host record
// (liveCount). It knows nothing of etcd or the supervisor's processes.
type admission struct {
	// capacity is the slot count in force (0 = unlimited), resources what
	// instances may reserve of the host, instanceMemory the default memory
	// reservation (0 when Config.Capacity is explicit: then only declared
	// memory counts). Fixed at construction.
	capacity       int
	resources      registry.HostResources
	instanceMemory int64

	roomCh chan struct{} // see noteRoom

	mu   sync.Mutex             // guards the maps below
	live map[string]reservation // non-terminal instances supervised here
	// reserved holds the instances of start tickets being claimed or
	// started here that the supervisor has not reported yet; with live
	// they count against the capacity and resources.
	reserved map[string]reservation
	skipped  map[string]registry.Ticket // see skip
}

func newAdmission(capacity int, res registry.HostResources, instanceMemory int64) *admission {
	// The host record says what an instance declaring no memory reserves
	// here, so that the fleet's admission (registry.Fleet) counts as this
	// host does.
	res.InstanceMemory = instanceMemory
	return &admission{
		capacity:       capacity,
		resources:      res,
		instanceMemory: instanceMemory,
		roomCh:         make(chan struct{}, 1),
		live:           make(map[string]reservation),
		reserved:       make(map[string]reservation),
		skipped:        make(map[string]registry.Ticket),
	}
}

// reservationOf is what an instance of ticket t reserves on this host:
// what its process type declares, and the default memory reservation
// when it declares none.
func (ad *admission) reservationOf(t registry.Ticket) reservation {
	var r reservation
	if t.Reserve != nil {
		r = reservation{MemoryBytes: t.Reserve.MemoryBytes, CPUMillis: t.Reserve.CPUMillis}
	}
	if r.MemoryBytes == 0 {
		r.MemoryBytes = ad.instanceMemory
	}
	return r
}

// reservationFromMeta reads an instance's reservation back; an instance
// started before reservations were recorded reserves the default.
func (ad *admission) reservationFromMeta(m map[string]string) reservation {
	mem, err := strconv.ParseInt(m[metaReserveMem], 10, 64)
	if err != nil {
		mem = ad.instanceMemory
	}
	cpu, _ := strconv.Atoi(m[metaReserveCPU])
	return reservation{MemoryBytes: mem, CPUMillis: cpu}
}

// liveCount is the number of instances supervised here that are not
// terminal, plus the starts reserved (claimed or being claimed, not yet
// reported by the supervisor). It comes from sets kept up to date by state
// changes, not from a walk of the supervisor.
func (ad *admission) liveCount() int {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	return len(ad.live) + len(ad.reserved)
}

// noteState keeps the set of live (non-terminal) instances with what
// they reserve (from their meta); the first report of an instance ends
// its reservation.
func (ad *admission) noteState(id string, st supervisor.Status) {
	r := ad.reservationFromMeta(st.Meta)
	ad.mu.Lock()
	delete(ad.reserved, id)
	if st.State.Terminal() {
		if _, was := ad.live[id]; was {
			defer ad.noteRoom()
		}
		delete(ad.live, id)
	} else {
		ad.live[id] = r
	}
	ad.mu.Unlock()
}

// reserve takes room for instance id (reserving r) before its start
// ticket is claimed: false, and why, when the host cannot take it (see
// admit). A burst of tickets is thus never claimed past the capacity,
// though the instances start later.
func (ad *admission) reserve(id string, r reservation) (bool, string) {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	ok, why := admit(ad.capacity, ad.resources, ad.usageLocked(), r)
	if ok {
		ad.reserved[id] = r
	}
	return ok, why
}

// usageLocked is what the live and reserved instances take.
func (ad *admission) usageLocked() usage {
	var u usage
	for _, r := range ad.live {
		u.add(r)
	}
	for _, r := range ad.reserved {
		u.add(r)
	}
	return u
}

// fits reports whether this host could take one more instance reserving r.
func (ad *admission) fits(r reservation) bool {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	ok, _ := admit(ad.capacity, ad.resources, ad.usageLocked(), r)
	return ok
}

// settle ends the reservation of instance id once its start ticket ran,
// unless a report of the supervisor is still to come (and will end it):
// supervised says the supervisor has the instance (the start failed, or
// the instance was running already, when it has not reported it yet).
func (ad *admission) settle(id string, supervised bool) {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	if _, reported := ad.live[id]; !supervised || reported {
		if _, held := ad.reserved[id]; held && !reported {
			defer ad.noteRoom()
		}
		delete(ad.reserved, id)
	}
}

// unreserve gives back the room of a start that did not happen.
func (ad *admission) unreserve(id string) {
	ad.mu.Lock()
	delete(ad.reserved, id)
	ad.mu.Unlock()
	ad.noteRoom()
}

// skip keeps start ticket t, passed over because it did not fit this
// host, for when room frees up here (noteRoom), unless another host
// takes it meanwhile (unskip).
func (ad *admission) skip(t registry.Ticket) {
	ad.mu.Lock()
	ad.skipped[t.ID] = t
	ad.mu.Unlock()
}

func (ad *admission) unskip(id string) {
	ad.mu.Lock()
	delete(ad.skipped, id)
	ad.mu.Unlock()
}

// forgetSkipped drops every skipped ticket (a new session watches the
// tickets from the start and sees them again).
func (ad *admission) forgetSkipped() {
	ad.mu.Lock()
	clear(ad.skipped)
	ad.mu.Unlock()
}

// takeFitting removes from the skipped tickets, and returns oldest first,
// those that fit the room there is now (each counted against what the
// ones before it reserve), and drops those host may no longer take (it
// failed them, or it is draining).
func (ad *admission) takeFitting(host string, draining func() bool) []registry.Ticket {
	ad.mu.Lock()
	defer ad.mu.Unlock()
	ids := make([]string, 0, len(ad.skipped))
	for id := range ad.skipped {
		ids = append(ids, id)
	}
	sort.Strings(ids) // ticket ids sort by creation time
	u := ad.usageLocked()
	var out []registry.Ticket
	for _, id := range ids {
		t := ad.skipped[id]
		if t.Excludes(host) || draining() {
			delete(ad.skipped, id)
			continue
		}
		r := ad.reservationOf(t)
		if ok, _ := admit(ad.capacity, ad.resources, u, r); !ok {
			continue
		}
		u.add(r)
		delete(ad.skipped, id)
		out = append(out, t)
	}
	return out
}

// room returns the channel noteRoom signals.
func (ad *admission) room() <-chan struct{} { return ad.roomCh }

// noteRoom wakes the ticket loop to offer the start tickets it passed
// over for want of room. It never blocks.
func (ad *admission) noteRoom() {
	select {
	case ad.roomCh <- struct{}{}:
	default:
	}
}
