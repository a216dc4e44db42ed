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

// benchBatch is the tickets per ClaimBatch in BenchmarkClaim's batched
// rounds: about what an agent's claim loops averaged over a burst of
// 1000 start tickets in test/bench (1000 claims in 103 to 125 round
// trips with 3 agents).
const benchBatch = 8

// rawTxn is the baseline operation: a raw single-key etcd transaction, a
// create-if-absent put of a distinct key.
func rawTxn(ctx context.Context, cli *clientv3.Client, key string) error {
	_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, "h1")).Commit()
	return err
}

// shapedTxn is a claim's transaction written by hand with clientv3, keys
// and value prepared beforehand: 3 compares (ticket unchanged, claim
// absent, instance unchanged since the ticket) and 3 puts (claim with lease, instance record, host index entry
// with lease). It is the etcd work the registry's key layout asks of a
// claim, without anything of the registry's own code.
type shapedTxn struct {
	cmps []clientv3.Cmp
	ops  []clientv3.Op
}

// shapedTxns prepares one shapedTxn per ticket, each for one of the
// sessions in turn.
func shapedTxns(r *Registry, sessions []*HostSession, tickets []Ticket) []shapedTxn {
	out := make([]shapedTxn, len(tickets))
	for i, t := range tickets {
		s := sessions[i%len(sessions)]
		in := Instance{ID: t.Instance, App: t.App, Rev: t.Rev, Proc: t.Proc, Host: s.id,
			State: InstanceClaimed, Since: time.Now().UTC(), Ticket: t.ID, Created: t.Created}
		ck := r.claimKey(t.ID)
		out[i] = shapedTxn{
			cmps: []clientv3.Cmp{unchanged(r.ticketKey(t.ID), t.ModRevision), absent(ck),
				unchanged(r.instanceKey(in.ID), t.ModRevision)},
			ops: []clientv3.Op{clientv3.OpPut(ck, s.id, clientv3.WithLease(s.lease)),
				clientv3.OpPut(r.instanceKey(in.ID), encode(in)),
				clientv3.OpPut(r.hostInstanceKey(s.id, in.ID), "", clientv3.WithLease(s.lease))},
		}
	}
	return out
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
// reports both rates and their ratio (claim-%-of-raw). Two more kinds of
// rounds, also interleaved: the claim's transaction written by hand
// (claim-%-of-shaped) and ClaimBatch with benchBatch tickets per call, as
// the agent sends a burst (batched-claim-%-of-raw).
func BenchmarkClaim(b *testing.B) {
	for _, fsync := range []bool{false, true} {
		b.Run(fmt.Sprintf("fsync=%v", fsync), func(b *testing.B) { benchClaim(b, fsync) })
	}
}

// benchMember starts a fresh etcd member for one sub-benchmark: fsync off
// (as in the tests; CPU-bound, where a claim's extra operations weigh most)
// or on (as etcd runs in production, where the WAL's fsync weighs most).
// Each sub-benchmark has its own member, so none starts on another's keys,
// and the keys live under DefaultPrefix as in production rather than under
// a longer per-test prefix.
func benchMember(b *testing.B, fsync bool) *clientv3.Client {
	c := etcdtest.NewWith(b, func(cfg *embedetcd.Config) { cfg.Unsafe = !fsync })
	return c.Client(b)
}

func benchClaim(b *testing.B, fsync bool) {
	for _, n := range benchConcurrency {
		b.Run(fmt.Sprintf("claimers=%d", n), func(b *testing.B) {
			ctx := context.Background()
			cli := benchMember(b, fsync)
			r := New(cli, DefaultPrefix, nil)
			// A third each for the claims, the batched claims and the
			// shaped baseline.
			all := benchTickets(b, r, 3*b.N)
			tickets, batched := all[:b.N], all[2*b.N:]
			var sessions []*HostSession
			for i := range n {
				s, err := r.RegisterHost(ctx, Host{ID: fmt.Sprintf("h%d", i)}, 30*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				sessions = append(sessions, s)
			}
			round := max(200, 10*n)
			var claimDur, rawDur, shapedDur, batchDur time.Duration
			claims := func(batch []Ticket) {
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
			// Batched claims (timer stopped too: the benchmark's op is
			// one Claim) of benchBatch tickets per ClaimBatch.
			batches := func(batch []Ticket) {
				b.StopTimer()
				start := time.Now()
				var next sync.Mutex
				k := 0
				groups := (len(batch) + benchBatch - 1) / benchBatch
				fanOut(b, n, groups, func(i int) error {
					next.Lock()
					s := sessions[k%n]
					k++
					next.Unlock()
					for _, res := range s.ClaimBatch(ctx, batch[i*benchBatch:min(len(batch), (i+1)*benchBatch)]) {
						if res.Err != nil {
							return res.Err
						}
					}
					return nil
				})
				batchDur += time.Since(start)
				b.StartTimer()
			}
			// The baselines run with the timer stopped.
			raws := func(from, count int) {
				b.StopTimer()
				start := time.Now()
				fanOut(b, n, count, func(i int) error {
					return rawTxn(ctx, cli, fmt.Sprintf("%sraw/%08d", r.Prefix(), from+i))
				})
				rawDur += time.Since(start)
				b.StartTimer()
			}
			shapes := func(batch []shapedTxn) {
				b.StopTimer()
				start := time.Now()
				fanOut(b, n, len(batch), func(i int) error {
					resp, err := cli.Txn(ctx).If(batch[i].cmps...).Then(batch[i].ops...).Commit()
					if err == nil && !resp.Succeeded {
						err = fmt.Errorf("shaped claim transaction %d failed", i)
					}
					return err
				})
				shapedDur += time.Since(start)
				b.StartTimer()
			}
			shaped := shapedTxns(r, sessions, all[b.N:2*b.N])
			b.ResetTimer()
			for done, k := 0, 0; done < len(tickets); done, k = done+round, k+1 {
				batch := tickets[done:min(done+round, len(tickets))]
				steps := []func(){
					func() { claims(batch) },
					func() { raws(done, len(batch)) },
					func() { shapes(shaped[done : done+len(batch)]) },
					func() { batches(batched[done : done+len(batch)]) },
				}
				// Rotate the order so no side always runs first.
				for j := range steps {
					steps[(j+k)%len(steps)]()
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/claimDur.Seconds(), "claims/s")
			b.ReportMetric(float64(b.N)/rawDur.Seconds(), "raw-txns/s")
			b.ReportMetric(float64(b.N)/shapedDur.Seconds(), "shaped-txns/s")
			b.ReportMetric(100*rawDur.Seconds()/claimDur.Seconds(), "claim-%-of-raw")
			b.ReportMetric(100*shapedDur.Seconds()/claimDur.Seconds(), "claim-%-of-shaped")
			b.ReportMetric(float64(b.N)/batchDur.Seconds(), "batched-claims/s")
			b.ReportMetric(100*rawDur.Seconds()/batchDur.Seconds(), "batched-claim-%-of-raw")
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
	for _, n := range benchConcurrency {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			ctx := context.Background()
			cli := benchMember(b, fsync)
			b.ResetTimer()
			fanOut(b, n, b.N, func(i int) error { return rawTxn(ctx, cli, fmt.Sprintf("%sk%08d", DefaultPrefix, i)) })
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "txns/s")
		})
	}
}
