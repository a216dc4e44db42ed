package agent

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
)

// ErrNoPort means every port of the configured range is in use.
var ErrNoPort = errors.New("agent: no free port in range")

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

// Allocate returns a free port for id, or ErrNoPort.
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
		if !portFree(port) {
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

// owner returns the instance holding port ("" if none).
func (p *portAllocator) owner(port int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used[port]
}

// portFree reports whether a TCP listener can bind port on all addresses.
func portFree(port int) bool {
	l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}
