package registry

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/etcdtest"
)

// benchTickets writes n start tickets with pending instances straight into
// etcd (in transactions of 50, as Scale would) and returns them as read.
func benchTickets(b *testing.B, r *Registry, n int) []Ticket {
	ctx := context.Background()
	now := time.Now().UTC()
	for i := 0; i < n; i += 50 {
		var ops []clientv3.Op
		for j := i; j < min(n, i+50); j++ {
			t := Ticket{ID: newTicketID(), Op: TicketStart, App: "bench", Rev: "v1", Proc: "worker",
				Instance: newInstanceID("bench", "worker"), MaxAttempts: 3, Created: now}
			in := Instance{ID: t.Instance, App: "bench", Rev: "v1", Proc: "worker", State: InstancePending,
				Since: now, Ticket: t.ID, Created: now}
			ops = append(ops, clientv3.OpPut(r.ticketKey(t.ID), encode(t)), clientv3.OpPut(r.instanceKey(in.ID), encode(in)))
		}
		if _, err := r.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	resp, err := r.cli.Get(ctx, r.ticketsDir(), clientv3.WithPrefix())
	if err != nil {
		b.Fatal(err)
	}
	var out []Ticket
	for _, kv := range resp.Kvs {
		t, err := decodeTicket(kv, strings.TrimPrefix(string(kv.Key), r.ticketsDir()))
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, t)
	}
	return out
}

var benchConcurrency = []int{1, 16, 64}

// BenchmarkClaim measures claims per second: each op is one Claim (one
// transaction, one round trip) of a distinct start ticket by one of N
// concurrent host sessions sharing one client.
func BenchmarkClaim(b *testing.B) {
	c := etcdtest.New(b)
	cli := c.Client(b)
	for _, n := range benchConcurrency {
		b.Run(fmt.Sprintf("claimers=%d", n), func(b *testing.B) {
			ctx := context.Background()
			r := New(cli, etcdtest.Prefix(b), nil)
			tickets := benchTickets(b, r, b.N)
			var sessions []*HostSession
			for i := range n {
				s, err := r.RegisterHost(ctx, Host{ID: fmt.Sprintf("h%d", i)}, 30*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				sessions = append(sessions, s)
			}
			work := make(chan Ticket, len(tickets))
			for _, t := range tickets {
				work <- t
			}
			close(work)
			var wg sync.WaitGroup
			b.ResetTimer()
			for _, s := range sessions {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for t := range work {
						if _, err := s.Claim(ctx, t); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "claims/s")
			for _, s := range sessions {
				s.Close(ctx)
			}
		})
	}
}

// BenchmarkRawTxn is the baseline for BenchmarkClaim: each op is a raw
// single-key etcd transaction (create-if-absent put of a distinct key), at
// the same concurrency on the same kind of member.
func BenchmarkRawTxn(b *testing.B) {
	c := etcdtest.New(b)
	cli := c.Client(b)
	for _, n := range benchConcurrency {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			ctx := context.Background()
			prefix := etcdtest.Prefix(b)
			work := make(chan int, b.N)
			for i := range b.N {
				work <- i
			}
			close(work)
			var wg sync.WaitGroup
			b.ResetTimer()
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range work {
						k := fmt.Sprintf("%sk%08d", prefix, i)
						_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
							Then(clientv3.OpPut(k, "h1")).Commit()
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "txns/s")
		})
	}
}
