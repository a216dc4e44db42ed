package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// startDNS runs a DNSServer on loopback until the test ends and returns
// its address (the same port for UDP and TCP). Its rate limit is off (the
// benchmarks ask from one source as fast as they can); see startDNSWith.
func startDNS(t testing.TB, store *Store) string {
	t.Helper()
	return startDNSWith(t, store, func(d *DNSServer) { d.RateLimit = -1 })
}

// startDNSWith is startDNS with mod applied to the server before it runs.
func startDNSWith(t testing.TB, store *Store, mod func(*DNSServer)) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if attempt == 5 {
			t.Fatalf("no port free for both udp and tcp: %v", err)
		}
	}
	d := &DNSServer{Store: store, PacketConn: pc, Listener: ln}
	mod(d)
	if _, isTest := t.(*testing.T); isTest {
		d.Logger = testLogger(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dns run: %v", err)
		}
	})
	return pc.LocalAddr().String()
}

// resolverFor returns a Go resolver that sends every query to addr over
// network ("udp" or "tcp").
func resolverFor(addr, network string) *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
}

func TestDNSAnswersSRVAndA(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, e := range []Endpoint{
		instanceEndpoint("web.api", "1", "web-api-1", "10.0.0.1", 8001, true),
		instanceEndpoint("web.api", "1", "web-api-2", "10.0.0.2", 8002, true),
		instanceEndpoint("web.api", "1", "web-api-3", "10.0.0.3", 8003, false), // unhealthy: never answered
		instanceEndpoint("web.api", "1", "web-api-4", "fd00::4", 8004, true),
		instanceEndpoint("web.worker", "1", "web-worker-1", "10.0.0.9", 0, false),
		{Service: "payments", ID: "x1", Addr: "db-1.example.com", Port: 5432, Healthy: true, Source: SourceExternal},
	} {
		if err := f.store.Put(f.ctx, e, 0); err != nil {
			t.Fatal(err)
		}
	}
	addr := startDNS(t, f.store)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			r := resolverFor(addr, network)
			ctx, cancel := context.WithTimeout(f.ctx, testtime.Scaled(10*time.Second))
			defer cancel()

			_, srvs, err := r.LookupSRV(ctx, "", "", "api.web.visor.")
			if err != nil {
				t.Fatalf("SRV api.web.visor.: %v", err)
			}
			var got []string
			for _, s := range srvs {
				got = append(got, fmt.Sprintf("%s:%d", s.Target, s.Port))
			}
			sort.Strings(got)
			want := "[0a000001.addr.visor.:8001 0a000002.addr.visor.:8002 fd000000000000000000000000000004.addr.visor.:8004]"
			if fmt.Sprint(got) != want {
				t.Fatalf("SRV = %v, want %s", got, want)
			}

			ips, err := r.LookupIPAddr(ctx, "api.web.visor.")
			if err != nil {
				t.Fatalf("A/AAAA api.web.visor.: %v", err)
			}
			var gotIPs []string
			for _, ip := range ips {
				gotIPs = append(gotIPs, ip.IP.String())
			}
			sort.Strings(gotIPs)
			if fmt.Sprint(gotIPs) != "[10.0.0.1 10.0.0.2 fd00::4]" {
				t.Fatalf("addresses = %v, want the healthy endpoints' addresses", gotIPs)
			}

			// An SRV target resolves to its address.
			ips, err = r.LookupIPAddr(ctx, "0a000002.addr.visor.")
			if err != nil || len(ips) != 1 || ips[0].IP.String() != "10.0.0.2" {
				t.Fatalf("target address = %v, %v", ips, err)
			}
			// An external service by host name: SRV target is that name.
			_, srvs, err = r.LookupSRV(ctx, "", "", "payments.visor.")
			if err != nil || len(srvs) != 1 || srvs[0].Target != "db-1.example.com." || srvs[0].Port != 5432 {
				t.Fatalf("SRV payments = %v, %v", srvs, err)
			}
			// No healthy endpoint, or no service: NXDOMAIN.
			for _, name := range []string{"worker.web.visor.", "nothing.visor.", "UPPER.web.visor."} {
				_, err = r.LookupIPAddr(ctx, name)
				var dnsErr *net.DNSError
				if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
					t.Fatalf("lookup %s = %v, want not found", name, err)
				}
			}
		})
	}
}

func TestDNSRunStopsAndReportsListenErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The TCP port is taken: Run fails to listen and says so.
	d := &DNSServer{Addr: ln.Addr().String(), Store: f.store}
	if err := d.Run(f.ctx); err == nil {
		t.Fatal("Run on a taken port returned nil")
	}
	// On a free port, Run returns nil once ctx ends.
	ctx, cancel := context.WithCancel(f.ctx)
	d = &DNSServer{Addr: "127.0.0.1:0", Store: f.store}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v after cancel, want nil", err)
		}
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("Run did not return after cancel")
	}
}
