package discovery

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/etcdtest"
)

const (
	benchServices     = 1000 // services of benchEndpointsPer endpoints each
	benchEndpointsPer = 10   // 10 000 endpoints in all
)

// benchStore starts etcd and stores benchServices*benchEndpointsPer
// healthy endpoints, in transactions of 100 puts.
func benchStore(b *testing.B) (*Store, *clientv3.Client, context.Context) {
	b.Helper()
	c := etcdtest.New(b)
	cli := c.Client(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	b.Cleanup(cancel)
	s := NewStore(cli, etcdtest.Prefix(b), nil)
	var ops []clientv3.Op
	flush := func() {
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range benchServices {
		for j := range benchEndpointsPer {
			e := instanceEndpoint(fmt.Sprintf("app%d.web", i), "1.2.3", fmt.Sprintf("app%d-web-%d", i, j),
				fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), 8000+j, true)
			val, err := encode(e)
			if err != nil {
				b.Fatal(err)
			}
			ops = append(ops, clientv3.OpPut(s.key(e.Service, e.ID), val))
			if len(ops) == 100 {
				flush()
			}
		}
	}
	if len(ops) > 0 {
		flush()
	}
	return s, cli, ctx
}

// BenchmarkLookupHTTP measures lookups of one service (10 endpoints, ^1.2)
// through the HTTP API and the Go client, with 10 000 endpoints stored.
func BenchmarkLookupHTTP(b *testing.B) {
	s, _, ctx := benchStore(b)
	srv := httptest.NewServer(NewHandler(s, nil, nil))
	defer srv.Close()
	cl := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		eps, err := cl.Lookup(ctx, fmt.Sprintf("app%d.web", i%benchServices), "^1.2", true)
		if err != nil || len(eps) != benchEndpointsPer {
			b.Fatalf("lookup: %d endpoints, %v", len(eps), err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

// BenchmarkLookupDNS measures SRV questions over UDP for one service (10
// healthy endpoints), with 10 000 endpoints stored.
func BenchmarkLookupDNS(b *testing.B) {
	s, _, _ := benchStore(b)
	addr := startDNS(b, s)
	cl := &dns.Client{Net: "udp", UDPSize: 4096}
	conn, err := cl.Dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("web.app%d.visor.", i%benchServices), dns.TypeSRV)
		m.SetEdns0(4096, false)
		resp, _, err := cl.ExchangeWithConn(m, conn)
		if err != nil || len(resp.Answer) != benchEndpointsPer {
			b.Fatalf("SRV: %v answers, %v", resp, err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

// BenchmarkRenewWrites renews 1 000 external registrations per iteration
// and reports the etcd writes they caused, from the revision delta. The
// registrations share one lease, so the target is 0.
func BenchmarkRenewWrites(b *testing.B) {
	c := etcdtest.New(b)
	cli := c.Client(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		b.Fatal(err)
	}
	s := NewStore(cli, etcdtest.Prefix(b), nil)
	reg := NewRegistrar(s, lease.ID, RegistrarConfig{MaxPerClient: 1000})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(runCtx) }()
	defer func() { stop(); <-done }()
	regs := make([]Endpoint, 1000)
	for i := range regs {
		e, err := reg.Register(ctx, "bench", Endpoint{Service: "svc", Version: "1.0.0", Addr: "192.0.2.1", Port: 1000 + i}, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		regs[i] = e
	}
	rev := func() int64 {
		resp, err := cli.Get(ctx, "probe")
		if err != nil {
			b.Fatal(err)
		}
		return resp.Header.Revision
	}
	before := rev()
	b.ResetTimer()
	for b.Loop() {
		for _, e := range regs {
			if _, err := reg.Renew(ctx, e.ID); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	writes := rev() - before
	renewals := float64(b.N) * float64(len(regs))
	b.ReportMetric(float64(writes)/renewals, "writes/renewal")
	b.ReportMetric(renewals/b.Elapsed().Seconds(), "renewals/s")
}

// BenchmarkLookupHTTPParallel is BenchmarkLookupHTTP with 16 concurrent
// clients per core: throughput rather than latency.
func BenchmarkLookupHTTPParallel(b *testing.B) {
	s, _, ctx := benchStore(b)
	srv := httptest.NewServer(NewHandler(s, nil, nil))
	defer srv.Close()
	cl := &Client{BaseURL: srv.URL, HTTP: srv.Client()}
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			eps, err := cl.Lookup(ctx, fmt.Sprintf("app%d.web", i%benchServices), "^1.2", true)
			if err != nil || len(eps) != benchEndpointsPer {
				b.Errorf("lookup: %d endpoints, %v", len(eps), err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

// BenchmarkLookupDNSParallel is BenchmarkLookupDNS with 16 concurrent
// clients per core.
func BenchmarkLookupDNSParallel(b *testing.B) {
	s, _, _ := benchStore(b)
	addr := startDNS(b, s)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cl := &dns.Client{Net: "udp", UDPSize: 4096}
		conn, err := cl.Dial(addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		i := 0
		for pb.Next() {
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("web.app%d.visor.", i%benchServices), dns.TypeSRV)
			m.SetEdns0(4096, false)
			resp, _, err := cl.ExchangeWithConn(m, conn)
			if err != nil || len(resp.Answer) != benchEndpointsPer {
				b.Errorf("SRV: %v, %v", resp, err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}
