package registry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

// The test binary becomes a claimer process when claimerEnv names a host.
const (
	claimerEnv          = "VISOR_REGISTRY_TEST_CLAIMER"
	claimerEndpointsEnv = "VISOR_REGISTRY_TEST_ENDPOINTS"
	claimerPrefixEnv    = "VISOR_REGISTRY_TEST_PREFIX"
)

// claim runs one claimer: it registers host and claims every ticket
// WatchTickets offers, calling claimed after each success, until ctx ends
// or the lease is lost; it calls lost when it stops because the lease is
// lost. With batch > 1 it claims up to batch tickets at a time with
// ClaimBatch, else one at a time with Claim.
func claim(ctx context.Context, r *Registry, host string, batch int, claimed func(id string), lost func()) error {
	s, err := r.RegisterHost(ctx, Host{ID: host}, 10*time.Second)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), testtime.Scaled(5*time.Second))
		defer cancel()
		s.Close(cctx)
	}()
	wctx, cancel := context.WithCancel(ctx)
	events := r.WatchTickets(wctx, host)
	defer func() {
		cancel()
		for range events {
		}
	}()
	// Offered tickets wait in avail; deletions seen meanwhile remove them,
	// and the claimer tries them in random (map) order, so claimers collide
	// less, like agents with a spreading delay.
	avail := map[string]Ticket{}
	apply := func(ev TicketEvent) {
		switch {
		case ev.Err != nil:
		case ev.Deleted, ev.Claimed:
			delete(avail, ev.Ticket.ID)
		default:
			avail[ev.Ticket.ID] = ev.Ticket
		}
	}
	for {
		if len(avail) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-s.Done():
				lost()
				return nil
			case ev, ok := <-events:
				if !ok {
					return nil
				}
				apply(ev)
			}
		}
	drain:
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return nil
				}
				apply(ev)
			default:
				break drain
			}
		}
		var picked []Ticket
		for id, tk := range avail {
			delete(avail, id)
			if picked = append(picked, tk); len(picked) == max(batch, 1) {
				break
			}
		}
		var results []ClaimResult
		switch {
		case len(picked) == 0: // the drain took them all away
		case batch > 1:
			results = s.ClaimBatch(ctx, picked)
		default:
			_, err := s.Claim(ctx, picked[0])
			results = []ClaimResult{{Err: err}}
		}
		for i, res := range results {
			if res.Err == nil {
				claimed(picked[i].ID)
			}
		}
		for _, res := range results {
			switch err := res.Err; {
			case err == nil, errors.Is(err, ErrClaimed), errors.Is(err, ErrTicketChanged), errors.Is(err, ErrTicketDone):
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, ErrLeaseLost):
				lost()
				return nil
			default:
				return err
			}
		}
	}
}

// claimerMain is the body of a claimer process: it prints "claimed <id>"
// per claim and exits when stdin closes, on SIGTERM or when its lease is
// lost.
func claimerMain(host string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// This goroutine lives as long as the process: it ends the claimer
	// when the parent closes stdin.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	r, err := Dial(ctx, Config{Endpoints: strings.Split(os.Getenv(claimerEndpointsEnv), ","), Prefix: os.Getenv(claimerPrefixEnv)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer r.Close()
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	err = claim(ctx, r, host, 1, func(id string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "claimed %s\n", id)
		out.Flush()
	}, func() {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(out, "lost")
		out.Flush()
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// claimRace drives a claim race among claimers started by start (which
// returns a stop function). Phase one: 100 tickets, all claimed; then the
// lease of the claimer holding most is revoked and 100 more tickets come.
// It checks that every ticket ends claimed exactly once by a live claimer
// and that the revoked claimer's tickets were claimed again by others.
//
// On a loaded machine a claimer's own lease may expire too (its keepalives
// starved): its claims vanish with the lease and others claim those tickets
// again, as they must. Such a claimer reports that it lost its lease, and its
// wins count like the revoked claimer's, not as a second live holder.
func claimRace(t *testing.T, r *Registry, cli *clientv3.Client, hosts []string, start func(ctx context.Context, claimed func(host, id string), lost func(host string)) (stop func())) {
	ctx := testCtx(t)
	seed(t, r, "race", "v1", "worker")
	var mu sync.Mutex
	wins := map[string][]string{}      // ticket -> hosts whose Claim succeeded
	lostHosts := map[string]bool{}     // claimers that lost their lease
	reported := make(chan struct{}, 1) // a win was recorded
	stop := start(ctx, func(host, id string) {
		mu.Lock()
		wins[id] = append(wins[id], host)
		mu.Unlock()
		select {
		case reported <- struct{}{}:
		default:
		}
	}, func(host string) {
		mu.Lock()
		lostHosts[host] = true
		mu.Unlock()
	})
	defer stop()
	proctest.WaitFor(t, 30*time.Second, "claimers to register", func() bool {
		hs, err := r.Hosts(ctx)
		return err == nil && len(hs) == len(hosts)
	})

	holders := func() map[string]string {
		resp, err := cli.Get(ctx, r.claimsDir(), clientv3.WithPrefix())
		must(t, err)
		m := map[string]string{}
		for _, kv := range resp.Kvs {
			m[strings.TrimPrefix(string(kv.Key), r.claimsDir())] = string(kv.Value)
		}
		return m
	}
	_, err := r.Scale(ctx, "race", "v1", "worker", 100)
	must(t, err)
	proctest.WaitFor(t, 60*time.Second, "100 claims", func() bool { return len(holders()) == 100 })

	count := map[string]int{}
	for _, h := range holders() {
		count[h]++
	}
	victim := hosts[0]
	for _, h := range hosts {
		if count[h] > count[victim] {
			victim = h
		}
	}
	vh, err := r.Host(ctx, victim)
	must(t, err)
	t.Logf("claims per host after 100: %v; revoking %s", count, victim)
	_, err = cli.Revoke(ctx, clientv3.LeaseID(vh.Lease))
	must(t, err)

	_, err = r.Scale(ctx, "race", "v1", "worker", 200)
	must(t, err)
	proctest.WaitFor(t, 60*time.Second, "200 claims by live claimers", func() bool {
		hs := holders()
		if len(hs) != 200 {
			return false
		}
		for _, h := range hs {
			if h == victim {
				return false
			}
		}
		return true
	})

	// A claimer reports a win after its round trip (in a batch, after
	// the reads that explain the batch's lost claims): wait until every
	// holder has reported its claim.
	final := holders()
	holderReported := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id, h := range final {
			if !slices.Contains(wins[id], h) {
				return false
			}
		}
		return true
	}
	deadline := time.After(testtime.Scaled(30 * time.Second))
	for !holderReported() {
		select {
		case <-reported:
		case <-deadline:
			t.Fatal("timed out waiting for the holders to report their claims")
		}
	}
	tickets, err := r.Tickets(ctx)
	must(t, err)
	if len(tickets) != 200 {
		t.Fatalf("%d tickets, want 200", len(tickets))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, tk := range tickets {
		var live []string
		revoked := 0
		for _, h := range wins[tk.ID] {
			switch {
			case h == victim:
				revoked = 1
			case lostHosts[h] && h != final[tk.ID]:
				// Its lease expired: its claim went with it.
			case !slices.Contains(live, h):
				// A claimer that tries a ticket it holds again (seen
				// twice) succeeds again: a claim is idempotent for its
				// session. Only distinct holders count.
				live = append(live, h)
			}
		}
		if len(live) != 1 || live[0] != final[tk.ID] {
			t.Errorf("ticket %s: successful claims by live hosts %v, by revoked %d; holder %q", tk.ID, live, revoked, final[tk.ID])
		}
		in, err := r.Instance(ctx, tk.Instance)
		must(t, err)
		if in.State != InstanceClaimed || in.Host != final[tk.ID] {
			t.Errorf("instance %s = %s on %q, want claimed on %q", in.ID, in.State, in.Host, final[tk.ID])
		}
	}
	if count[victim] == 0 {
		t.Logf("the revoked claimer held no claims")
	}
	if len(lostHosts) > 0 {
		t.Logf("claimers whose own lease expired under load: %v", lostHosts)
	}
	reclaimed := 0
	for _, hs := range wins {
		for _, h := range hs {
			if h == victim {
				reclaimed++
			}
		}
	}
	if reclaimed < count[victim] {
		t.Errorf("revoked claimer recorded %d wins, but held %d claims", reclaimed, count[victim])
	}
}

func TestClaimRaceGoroutines(t *testing.T) {
	claimRaceGoroutines(t, 1)
}

// TestClaimRaceBatches is the goroutine race with claims sent in batches
// of up to 8 tickets.
func TestClaimRaceBatches(t *testing.T) {
	claimRaceGoroutines(t, 8)
}

// claimRaceGoroutines races 16 claimer goroutines, each claiming batch
// tickets at a time.
func claimRaceGoroutines(t *testing.T, batch int) {
	r, cli, c := setup(t)
	var hosts []string
	for i := range 16 {
		hosts = append(hosts, fmt.Sprintf("g%02d", i))
	}
	claimRace(t, r, cli, hosts, func(ctx context.Context, claimed func(host, id string), lost func(host string)) func() {
		ctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for _, h := range hosts {
			// Each claimer has its own client, like separate agents.
			hr := New(c.Client(t), r.Prefix(), nil)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := claim(ctx, hr, h, batch, func(id string) { claimed(h, id) }, func() { lost(h) }); err != nil {
					t.Errorf("claimer %s: %v", h, err)
				}
			}()
		}
		return func() { cancel(); wg.Wait() }
	})
}

func TestClaimRaceProcesses(t *testing.T) {
	r, cli, c := setup(t)
	hosts := []string{"p0", "p1", "p2"}
	claimRace(t, r, cli, hosts, func(ctx context.Context, claimed func(host, id string), lost func(host string)) func() {
		var stops []func()
		for _, h := range hosts {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), claimerEnv+"="+h,
				claimerEndpointsEnv+"="+strings.Join(c.Endpoints(), ","), claimerPrefixEnv+"="+r.Prefix())
			cmd.Stderr = &logWriter{t: t}
			stdin, err := cmd.StdinPipe()
			must(t, err)
			stdout, err := cmd.StdoutPipe()
			must(t, err)
			cmd.WaitDelay = 10 * time.Second
			must(t, cmd.Start())
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					if id, ok := strings.CutPrefix(sc.Text(), "claimed "); ok {
						claimed(h, id)
					} else if sc.Text() == "lost" {
						lost(h)
					}
				}
			}()
			stops = append(stops, func() {
				stdin.Close()
				<-readDone // all output read before Wait closes the pipe
				if err := cmd.Wait(); err != nil {
					t.Errorf("claimer process %s: %v", h, err)
				}
			})
		}
		return func() {
			for _, s := range stops {
				s()
			}
		}
	})
}
