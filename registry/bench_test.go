package registry

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/embedetcd"
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

// rawTxn is the baseline operation: a raw single-key etcd transaction, a
// create-if-absent put of a distinct key.
func rawTxn(ctx context.Context, cli *clientv3.Client, key string) error {
	_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, "h1")).Commit()
	return err
}

// fanOut runs op(i) for i in [0, count) on n goroutines and waits.
func fanOut(b *testing.B, n, count int, op func(i int) error) {
	work := make(chan int, count)
	for i := range count {
		work <- i
	}
	close(work)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := op(i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkClaim measures claims per second: each op is one Claim (one
// transaction, one round trip) of a distinct start ticket by one of N
// concurrent host sessions sharing one client. The machine this runs on is
// shared, so throughput drifts; to compare like with like the benchmark
// interleaves rounds of claims with rounds of raw single-key transactions
// (the BenchmarkRawTxn operation, same concurrency, timer stopped) and
// reports both rates and their ratio (claim-%-of-raw).
func BenchmarkClaim(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		b.Run(fmt.Sprintf("fsync=%v", fsync), func(b *testing.B) { benchClaim(b, fsync) })
	}
}

// benchMember starts the benchmarks' etcd member: fsync off (as in the
// tests; CPU-bound, where a claim's extra operations weigh most) or on (as
// etcd runs in production, where the WAL's fsync weighs most).
func benchMember(b *testing.B, fsync bool) *clientv3.Client {
	c := etcdtest.NewWith(b, func(cfg *embedetcd.Config) { cfg.Unsafe = !fsync })
	return c.Client(b)
}

func benchClaim(b *testing.B, fsync bool) {
	cli := benchMember(b, fsync)
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
			round := max(200, 10*n)
			var claimDur, rawDur time.Duration
			b.ResetTimer()
			for done, odd := 0, false; done < len(tickets); done, odd = done+round, !odd {
				batch := tickets[done:min(done+round, len(tickets))]
				claims := func() {
					start := time.Now()
					var next sync.Mutex
					k := 0
					fanOut(b, n, len(batch), func(i int) error {
						next.Lock()
						s := sessions[k%n]
						k++
						next.Unlock()
						_, err := s.Claim(ctx, batch[i])
						return err
					})
					claimDur += time.Since(start)
				}
				raws := func() {
					b.StopTimer()
					start := time.Now()
					fanOut(b, n, len(batch), func(i int) error {
						return rawTxn(ctx, cli, fmt.Sprintf("%sraw/%08d", r.Prefix(), done+i))
					})
					rawDur += time.Since(start)
					b.StartTimer()
				}
				// Alternate the order so neither side always runs first.
				if odd {
					raws()
					claims()
				} else {
					claims()
					raws()
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/claimDur.Seconds(), "claims/s")
			b.ReportMetric(float64(b.N)/rawDur.Seconds(), "raw-txns/s")
			b.ReportMetric(100*rawDur.Seconds()/claimDur.Seconds(), "claim-%-of-raw")
			for _, s := range sessions {
				s.Close(ctx)
			}
		})
	}
}

// BenchmarkRawTxn is the standalone baseline for BenchmarkClaim: each op
// is a raw single-key etcd transaction at the same concurrency on the same
// kind of member.
func BenchmarkRawTxn(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		b.Run(fmt.Sprintf("fsync=%v", fsync), func(b *testing.B) { benchRawTxn(b, fsync) })
	}
}

func benchRawTxn(b *testing.B, fsync bool) {
	cli := benchMember(b, fsync)
	for _, n := range benchConcurrency {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			ctx := context.Background()
			prefix := etcdtest.Prefix(b)
			b.ResetTimer()
			fanOut(b, n, b.N, func(i int) error { return rawTxn(ctx, cli, fmt.Sprintf("%sk%08d", prefix, i)) })
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "txns/s")
		})
	}
}
