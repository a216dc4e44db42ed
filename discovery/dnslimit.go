package discovery

import (
	"net/netip"
	"sync"
	"time"
)

// Defaults of the DNS server's response rate limit and answer size.
const (
	// DefaultDNSRate is the default of DNSServer.RateLimit: UDP responses
	// per second to one source (an IPv4 address or an IPv6 /64).
	DefaultDNSRate = 100
	// DefaultDNSBurst is the default of DNSServer.RateBurst.
	DefaultDNSBurst = 200
	// MaxUDPSize caps a UDP answer, whatever EDNS0 buffer size the query
	// advertises (the DNS flag day 2020 size); a larger answer is
	// truncated with TC set and the client retries over TCP.
	MaxUDPSize = 1232
	// maxRateSources bounds the sources tracked at once; beyond it, new
	// sources share one bucket until idle ones are dropped.
	maxRateSources = 16384
)

// rateLimiter is a token bucket per source address. A UDP source address
// can be forged, so a flood of questions "from" a victim must not turn
// into a flood of answers to it: over its rate a source gets nothing, but
// every second refused answer "slips" out as an empty truncated reply
// (no bigger than the question) so that a real client under the limit's
// pressure retries over TCP, which cannot be forged.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu      sync.Mutex // guards the fields below
	buckets map[netip.Addr]*bucket
	refused uint64
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int, now func() time.Time) *rateLimiter {
	if now == nil {
		now = time.Now
	}
	return &rateLimiter{rate: rate, burst: float64(burst), now: now, buckets: map[netip.Addr]*bucket{}}
}

// sourceKey is the bucket of addr: the address itself for IPv4, its /64
// for IPv6 (one host usually holds a whole /64).
func sourceKey(addr netip.Addr) netip.Addr {
	addr = addr.Unmap()
	if addr.Is6() {
		p, err := addr.Prefix(64)
		if err == nil {
			return p.Addr()
		}
	}
	return addr
}

// allow reports whether src may be answered now. When it may not, slip
// reports whether to send an empty truncated reply instead of nothing.
func (l *rateLimiter) allow(src netip.Addr) (ok, slip bool) {
	key := sourceKey(src)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxRateSources {
			l.dropIdle(now)
		}
		if len(l.buckets) >= maxRateSources {
			key = netip.Addr{} // the shared overflow bucket
			b = l.buckets[key]
		}
		if b == nil {
			b = &bucket{tokens: l.burst, last: now}
			l.buckets[key] = b
		}
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(l.burst, b.tokens+el*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, false
	}
	l.refused++
	return false, l.refused%2 == 1
}

// dropIdle forgets sources whose bucket has refilled: they are as new.
// l.mu must be held.
func (l *rateLimiter) dropIdle(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
		}
	}
}
