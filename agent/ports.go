package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/visorhq/visor/supervisor"
)

// ErrNoPort means every port of the configured range is in use.
var ErrNoPort = errors.New("agent: no free port in range")

// ErrNoDescriptors means the agent could not test a port because it has no
// file descriptor left (EMFILE, ENFILE): not a port shortage, and reported
// as what it is (issue 14 row 9: starts failed with a false "no free port").
var ErrNoDescriptors = errors.New("agent: out of file descriptors")

// portAllocator hands out ports from a range, skipping ports that are
// reserved by other instances here or that something on the host is
// listening on (checked by binding it).
type portAllocator struct {
	min, max int

	mu   sync.Mutex // guards next and used
	next int
	used map[int]string // port -> instance id
}

func newPortAllocator(min, max int) *portAllocator {
	return &portAllocator{min: min, max: max, next: min, used: make(map[int]string)}
}

// Reserve marks port as used by id (for re-adopted instances, and
// instances running again). It reports false, and changes nothing, when
// another instance holds port; reserving a port id holds already is a
// no-op.
func (p *portAllocator) Reserve(port int, id string) bool {
	if port == 0 {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if owner, taken := p.used[port]; taken && owner != id {
		return false
	}
	p.used[port] = id
	return true
}

// Allocate returns a free port for id, ErrNoPort, or (wrapped)
// ErrNoDescriptors when a port could not be tested for lack of
// descriptors.
func (p *portAllocator) Allocate(id string) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.max - p.min + 1
	for i := 0; i < n; i++ {
		port := p.next
		p.next++
		if p.next > p.max {
			p.next = p.min
		}
		if _, taken := p.used[port]; taken {
			continue
		}
		free, err := portFree(port)
		if err != nil {
			return 0, err
		}
		if !free {
			continue
		}
		p.used[port] = id
		return port, nil
	}
	return 0, fmt.Errorf("%w %d-%d", ErrNoPort, p.min, p.max)
}

// Free releases the port held by id, if it is still id's: freeing a port
// twice, or one given to another instance since, is a no-op.
func (p *portAllocator) Free(port int, id string) {
	p.mu.Lock()
	if p.used[port] == id {
		delete(p.used, port)
	}
	p.mu.Unlock()
}

// follow keeps the allocator in step with the supervisor's report st of
// instance id: an instance that reached a terminal state (exited or
// failed: stopped, given up by its restart policy, stopped as replaced or
// at shutdown) will not restart by itself, so its port is freed; an
// instance that runs again after that (a manual restart of a terminal
// instance) takes its port back unless another instance holds it by now,
// and then follow reports false. The stop phase of a manual restart must
// not be passed here (see Agent.InstanceStateChanged): a restarting
// instance keeps its port.
func (p *portAllocator) follow(id string, st supervisor.Status) bool {
	port, err := strconv.Atoi(st.Meta[metaPort])
	if err != nil {
		return true
	}
	if st.State.Terminal() {
		p.Free(port, id)
		return true
	}
	return p.Reserve(port, id)
}

// freeOf frees the port recorded in st's meta, if id still holds it.
func (p *portAllocator) freeOf(id string, st supervisor.Status) {
	if port, err := strconv.Atoi(st.Meta[metaPort]); err == nil {
		p.Free(port, id)
	}
}

// owner returns the instance holding port ("" if none).
func (p *portAllocator) owner(port int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used[port]
}

// portFree reports whether a TCP listener can bind port on all addresses.
// Running out of descriptors is an error wrapping ErrNoDescriptors and the
// system's errno, not a busy port.
func portFree(port int) (bool, error) {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
			return false, fmt.Errorf("%w while testing port %d: %w", ErrNoDescriptors, port, err)
		}
		return false, nil
	}
	l.Close()
	return true, nil
}

// ephemeralRangeFile holds the kernel's range of ports for outgoing
// connections (Linux; absent elsewhere).
const ephemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// ephemeralOverlap reports the part of [first, last] that lies inside the
// kernel's ephemeral port range read from file, and whether there is one.
// A port there can be taken at any moment by an outgoing connection (the
// agent's own to etcd, a health check's): an instance restarted on it then
// fails to bind, again and again. Found by the deployment acceptance test,
// whose agents' ranges were drawn up to 59 999: an instance crash-looped
// on a port a connection had taken. Nomad warns about the same overlap.
func ephemeralOverlap(first, last int, file string) (lo, hi int, ok bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	elo, err1 := strconv.Atoi(f[0])
	ehi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	lo, hi = max(first, elo), min(last, ehi)
	return lo, hi, lo <= hi
}
