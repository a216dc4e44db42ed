package discovery

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/miekg/dns"
)

// DNSServer answers DNS questions about healthy endpoints over UDP and TCP:
//
//	SRV  <proc>.<app>.visor.         one record per endpoint: port and a target
//	A    <proc>.<app>.visor.         IPv4 addresses of the endpoints
//	AAAA <proc>.<app>.visor.         IPv6 addresses of the endpoints
//	A/AAAA <hex-ip>.addr.visor.      the address encoded in the name (SRV targets)
//
// A service name's labels appear in reverse order under Domain, so service
// "web.api" (app web, proc api) is "api.web.visor." and an external service
// "payments" is "payments.visor.". SRV answers carry the target's address
// records in the additional section. A name without healthy endpoints is
// NXDOMAIN. Answers have a TTL of TTL seconds, so clients re-ask soon.
//
// Against reflection attacks with forged UDP sources, UDP answers are
// rate limited per source (RateLimit) and never larger than MaxUDPSize
// bytes (or 512 without EDNS0): a larger answer is truncated with TC set.
type DNSServer struct {
	// Addr is the UDP and TCP address to listen on, e.g. "127.0.0.1:8600".
	// Ignored for a protocol whose PacketConn or Listener is set.
	Addr string
	// Domain is the zone served; default "visor.".
	Domain string
	// Store is where endpoints are looked up.
	Store *Store
	// Logger receives lifecycle messages; default: discard.
	Logger hclog.Logger
	// TTL of answers; default 5s.
	TTL time.Duration
	// RateLimit is the most UDP answers per second to one source (an IPv4
	// address or an IPv6 /64), a token bucket of RateBurst. Over it a
	// source gets no answer, except every second one, which is an empty
	// reply with TC set (no larger than the question) so that a real
	// client retries over TCP. TCP is not rate limited: its source cannot
	// be forged. Default DefaultDNSRate; negative: no limit.
	RateLimit float64
	// RateBurst is the bucket size of RateLimit. Default DefaultDNSBurst.
	RateBurst int
	// PacketConn and Listener, when set, are used instead of listening on
	// Addr (tests, socket activation). Run closes them.
	PacketConn net.PacketConn
	Listener   net.Listener

	// now is the rate limiter's clock; tests set it.
	now func() time.Time
}

// lookupTimeout bounds the etcd read behind one question.
const lookupTimeout = 2 * time.Second

// listenDNS listens on addr over UDP and TCP. With port 0 both take the
// same port: the one UDP was given, tried again with another when TCP
// finds it taken (by an unrelated TCP socket), a few times.
func listenDNS(addr string) (net.PacketConn, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns listen udp %s: %w", addr, err)
		}
		tcpAddr := addr
		if port == "0" {
			tcpAddr = pc.LocalAddr().String() // the same port for both protocols
		}
		ln, err := net.Listen("tcp", tcpAddr)
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if port != "0" || !errors.Is(err, syscall.EADDRINUSE) || try == 15 {
			return nil, nil, fmt.Errorf("dns listen tcp %s: %w", tcpAddr, err)
		}
	}
}

// Run serves until ctx ends, then shuts both listeners down and returns
// nil once they are closed. A listen or serve failure is returned.
func (d *DNSServer) Run(ctx context.Context) error {
	if d.Store == nil {
		return errors.New("discovery: dns server needs a Store")
	}
	log := d.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.Named("dns")
	pc, ln, err := d.listeners()
	if err != nil {
		return err
	}
	r := d.newResolver(ctx, log)
	servers := []*dns.Server{
		{PacketConn: pc, Handler: dns.HandlerFunc(r.serve)},
		{Listener: ln, Handler: dns.HandlerFunc(r.serve)},
	}
	errs := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- srv.ActivateAndServe()
		}()
		select {
		case <-started:
		case err := <-errs:
			errs <- err
		}
	}
	log.Info("dns server listening", "udp", pc.LocalAddr().String(), "tcp", ln.Addr().String(), "domain", r.domain)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	for _, srv := range servers {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = srv.ShutdownContext(sctx) // "server not started" when its serve already failed
		cancel()
	}
	pc.Close()
	ln.Close()
	wg.Wait()
	if runErr != nil {
		return fmt.Errorf("dns serve: %w", runErr)
	}
	return nil
}

// listeners returns the server's UDP and TCP listeners: the ones it was
// given, else new ones on Addr (one port for both when Addr's port is 0).
func (d *DNSServer) listeners() (net.PacketConn, net.Listener, error) {
	pc, ln := d.PacketConn, d.Listener
	if pc == nil && ln == nil {
		return listenDNS(d.Addr)
	}
	if pc == nil {
		var err error
		if pc, err = net.ListenPacket("udp", d.Addr); err != nil {
			ln.Close()
			return nil, nil, fmt.Errorf("dns listen udp %s: %w", d.Addr, err)
		}
	}
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", d.Addr); err != nil {
			pc.Close()
			return nil, nil, fmt.Errorf("dns listen tcp %s: %w", d.Addr, err)
		}
	}
	return pc, ln, nil
}

// newResolver builds the resolver of d's domain, TTL and rate limit
// (defaults applied); base is the context of its lookups.
func (d *DNSServer) newResolver(base context.Context, log hclog.Logger) *resolver {
	domain := dns.Fqdn(strings.ToLower(d.Domain))
	if d.Domain == "" {
		domain = "visor."
	}
	ttl := uint32(5)
	if d.TTL > 0 {
		ttl = uint32(max(d.TTL/time.Second, 1))
	}
	r := &resolver{store: d.Store, domain: domain, ttl: ttl, log: log, base: base}
	if d.RateLimit >= 0 {
		rate, burst := d.RateLimit, d.RateBurst
		if rate == 0 {
			rate = DefaultDNSRate
		}
		if burst <= 0 {
			burst = DefaultDNSBurst
		}
		r.limit = newRateLimiter(rate, burst, d.now)
	}
	return r
}

// resolver answers one question at a time from the Store.
type resolver struct {
	store  *Store
	domain string
	ttl    uint32
	log    hclog.Logger
	base   context.Context
	limit  *rateLimiter // nil: no limit
}

func (r *resolver) serve(w dns.ResponseWriter, req *dns.Msg) {
	udp, isUDP := w.RemoteAddr().(*net.UDPAddr)
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	if isUDP && r.limit != nil {
		src, _ := netip.AddrFromSlice(udp.IP)
		if ok, slip := r.limit.allow(src); !ok {
			if slip {
				resp.Truncated = true // header + question: no larger than the query
				_ = w.WriteMsg(resp)
			}
			return
		}
	}
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(resp)
		return
	}
	q := req.Question[0]
	ctx, cancel := context.WithTimeout(r.base, lookupTimeout)
	defer cancel()
	resp.Rcode = r.answer(ctx, q, resp)
	if isUDP {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = min(max(int(opt.UDPSize()), dns.MinMsgSize), MaxUDPSize)
		}
		resp.Truncate(size)
	}
	if err := w.WriteMsg(resp); err != nil {
		r.log.Debug("dns write failed", "error", err)
	}
}

// answer fills resp for question q and returns the rcode.
func (r *resolver) answer(ctx context.Context, q dns.Question, resp *dns.Msg) int {
	name := strings.ToLower(q.Name)
	if q.Qclass != dns.ClassINET || !dns.IsSubDomain(r.domain, name) {
		return dns.RcodeRefused
	}
	rel := strings.TrimSuffix(strings.TrimSuffix(name, r.domain), ".")
	if rel == "" {
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeNS {
			resp.Answer = append(resp.Answer, r.soa())
		}
		return dns.RcodeSuccess
	}
	if hexIP, ok := strings.CutSuffix(rel, ".addr"); ok && !strings.Contains(hexIP, ".") {
		ip := decodeIP(hexIP)
		if ip == nil {
			return dns.RcodeNameError
		}
		if rr := r.addrRR(q.Name, ip, q.Qtype); rr != nil {
			resp.Answer = append(resp.Answer, rr)
		}
		return dns.RcodeSuccess
	}
	labels := strings.Split(rel, ".")
	for i, j := 0, len(labels)-1; i < j; i, j = i+1, j-1 {
		labels[i], labels[j] = labels[j], labels[i]
	}
	service := strings.Join(labels, ".")
	if ValidateName(service) != nil {
		return dns.RcodeNameError
	}
	eps, err := r.store.Lookup(ctx, service, "", true)
	if err != nil {
		r.log.Warn("dns lookup failed", "service", service, "error", err)
		return dns.RcodeServerFailure
	}
	if len(eps) == 0 {
		resp.Ns = append(resp.Ns, r.soa())
		return dns.RcodeNameError
	}
	for _, e := range eps {
		ip := net.ParseIP(e.Addr)
		switch q.Qtype {
		case dns.TypeSRV:
			target := dns.Fqdn(e.Addr)
			if ip != nil {
				target = encodeIP(ip) + ".addr." + r.domain
				if rr := r.addrRR(target, ip, addrType(ip)); rr != nil {
					resp.Extra = append(resp.Extra, rr)
				}
			}
			resp.Answer = append(resp.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: r.ttl},
				Priority: 1, Weight: 1, Port: uint16(e.Port), Target: target,
			})
		case dns.TypeA, dns.TypeAAAA, dns.TypeANY:
			if ip == nil {
				continue
			}
			if rr := r.addrRR(q.Name, ip, q.Qtype); rr != nil {
				resp.Answer = append(resp.Answer, rr)
			}
		}
	}
	return dns.RcodeSuccess
}

func addrType(ip net.IP) uint16 {
	if ip.To4() != nil {
		return dns.TypeA
	}
	return dns.TypeAAAA
}

// addrRR returns an A or AAAA record for ip when qtype asks for its family.
func (r *resolver) addrRR(name string, ip net.IP, qtype uint16) dns.RR {
	if v4 := ip.To4(); v4 != nil {
		if qtype != dns.TypeA && qtype != dns.TypeANY {
			return nil
		}
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: r.ttl}, A: v4}
	}
	if qtype != dns.TypeAAAA && qtype != dns.TypeANY {
		return nil
	}
	return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: r.ttl}, AAAA: ip.To16()}
}

func (r *resolver) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: r.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: r.ttl},
		Ns:      "ns." + r.domain,
		Mbox:    "hostmaster." + r.domain,
		Serial:  1,
		Refresh: 3600, Retry: 600, Expire: 86400, Minttl: r.ttl,
	}
}

// encodeIP writes an IP as hex: 8 digits for IPv4, 32 for IPv6.
func encodeIP(ip net.IP) string {
	if v4 := ip.To4(); v4 != nil {
		return hex.EncodeToString(v4)
	}
	return hex.EncodeToString(ip.To16())
}

func decodeIP(s string) net.IP {
	if len(s) != 8 && len(s) != 32 {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil
	}
	return net.IP(b)
}
