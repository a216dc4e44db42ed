package discovery

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/visorhq/visor/internal/testtime"
)

// fakeClock is a settable clock for the rate limiter.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestRateLimiterBuckets(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	l := newRateLimiter(2, 3, clk.now)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for i := range 3 {
		if ok, _ := l.allow(a); !ok {
			t.Fatalf("answer %d within the burst refused", i)
		}
	}
	// Over the burst: refused, every second one slips out truncated.
	var slips []bool
	for range 4 {
		ok, slip := l.allow(a)
		if ok {
			t.Fatal("answer over the burst allowed with a frozen clock")
		}
		slips = append(slips, slip)
	}
	if fmt.Sprint(slips) != "[true false true false]" {
		t.Fatalf("slips = %v, want every second refused answer slipped", slips)
	}
	if ok, _ := l.allow(b); !ok {
		t.Fatal("another source is limited by the first one's flood")
	}
	// 2/s: after 1s two more answers, not three.
	clk.add(time.Second)
	for i := range 2 {
		if ok, _ := l.allow(a); !ok {
			t.Fatalf("refilled answer %d refused", i)
		}
	}
	if ok, _ := l.allow(a); ok {
		t.Fatal("a third answer after 1s at 2/s allowed")
	}
	// One IPv6 /64 is one source.
	v6a, v6b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	for range 3 {
		l.allow(v6a)
	}
	if ok, _ := l.allow(v6b); ok {
		t.Fatal("a second address of the same /64 got its own bucket")
	}
}

// dnsQuery writes a query for name with id on conn.
func dnsQuery(t *testing.T, conn *dns.Conn, id uint16, name string, qtype uint16, edns uint16) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	if err := conn.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
}

// TestDNSRateLimitPerSource floods the server from one UDP source with the
// limiter's clock frozen: exactly the burst is answered, then every second
// question gets an empty truncated reply and the others nothing; another
// source is answered meanwhile, TCP too, and the flooded source is
// answered again once its bucket refills.
func TestDNSRateLimitPerSource(t *testing.T) {
	f := newFixture(t)
	if err := f.store.Put(f.ctx, instanceEndpoint("web.api", "1", "web-api-1", "10.0.0.1", 8001, true), 0); err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	const burst = 4
	addr := startDNSWith(t, f.store, func(d *DNSServer) {
		d.RateLimit, d.RateBurst, d.now = 1, burst, clk.now
	})
	dial := func(network, local string) *dns.Conn {
		t.Helper()
		d := net.Dialer{}
		if local != "" {
			d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(local)}
		}
		c, err := d.Dial(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(testtime.Scaled(20 * time.Second)))
		return &dns.Conn{Conn: c}
	}
	read := func(conn *dns.Conn) *dns.Msg {
		t.Helper()
		m, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		return m
	}
	flood := dial("udp", "127.0.0.1")
	for i := range burst {
		dnsQuery(t, flood, uint16(100+i), "api.web.visor.", dns.TypeA, 0)
		if m := read(flood); m.Id != uint16(100+i) || m.Truncated || len(m.Answer) != 1 {
			t.Fatalf("answer %d within the burst = %v", i, m)
		}
	}
	// Three over the burst: two slip out empty with TC, one gets nothing.
	for i := range 3 {
		dnsQuery(t, flood, uint16(200+i), "api.web.visor.", dns.TypeA, 0)
	}
	got := map[uint16]bool{}
	for range 2 {
		m := read(flood)
		if !m.Truncated || len(m.Answer) != 0 || m.Id < 200 || m.Id > 202 {
			t.Fatalf("reply over the limit = %v, want an empty truncated reply", m)
		}
		got[m.Id] = true
	}
	// The refused answers' fates are decided in order (the slip counter),
	// so the third one is dropped by now. Another source and TCP are
	// answered meanwhile.
	other := dial("udp", "127.0.0.2")
	dnsQuery(t, other, 300, "api.web.visor.", dns.TypeA, 0)
	if m := read(other); m.Truncated || len(m.Answer) != 1 {
		t.Fatalf("another source's answer = %v", m)
	}
	tcp := dial("tcp", "")
	dnsQuery(t, tcp, 400, "api.web.visor.", dns.TypeA, 0)
	if m := read(tcp); m.Truncated || len(m.Answer) != 1 {
		t.Fatalf("tcp answer during the flood = %v", m)
	}
	// One second refills one answer.
	clk.add(time.Second)
	dnsQuery(t, flood, 500, "api.web.visor.", dns.TypeA, 0)
	for {
		m := read(flood)
		if m.Id == 500 {
			if m.Truncated || len(m.Answer) != 1 {
				t.Fatalf("answer after the refill = %v", m)
			}
			break
		}
		t.Fatalf("unexpected reply %d (a refused answer sent after all?)", m.Id)
	}
	if len(got) != 2 {
		t.Fatalf("slipped replies %v, want 2 distinct", got)
	}
}

// TestDNSNoAmplification asks over UDP, advertising a 4096-byte EDNS0
// buffer, for a service with 200 endpoints: the answer is truncated to
// MaxUDPSize with TC set; over TCP the whole answer comes.
func TestDNSNoAmplification(t *testing.T) {
	f := newFixture(t)
	for i := range 200 {
		e := instanceEndpoint("big.svc", "1", fmt.Sprintf("big-svc-%d", i), fmt.Sprintf("fd00::%x", i+1), 8000+i, true)
		if err := f.store.Put(f.ctx, e, 0); err != nil {
			t.Fatal(err)
		}
	}
	addr := startDNS(t, f.store)
	q := new(dns.Msg)
	q.SetQuestion("svc.big.visor.", dns.TypeSRV)
	q.SetEdns0(4096, false)
	qb, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c := &dns.Client{Net: "udp", UDPSize: 4096, Timeout: testtime.Scaled(20 * time.Second)}
	m, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("udp: %v", err)
	}
	m.Compress = true // as sent
	mb, _ := m.Pack()
	if !m.Truncated || len(mb) > MaxUDPSize {
		t.Fatalf("udp answer: %d bytes, truncated %v; want at most %d bytes with TC", len(mb), m.Truncated, MaxUDPSize)
	}
	t.Logf("udp: question %d bytes, answer %d bytes (%.1fx), TC set", len(qb), len(mb), float64(len(mb))/float64(len(qb)))
	c.Net = "tcp"
	m, _, err = c.Exchange(q, addr)
	if err != nil || m.Truncated || len(m.Answer) != 200 {
		t.Fatalf("tcp: %d answers, truncated %v, %v; want all 200", len(m.Answer), m.Truncated, err)
	}
}
