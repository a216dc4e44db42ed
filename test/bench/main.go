package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/embedetcd"
	"github.com/visorhq/visor/registry"
)

// Result is one scale-up measurement.
type Result struct {
	N                     int     `json:"n"`
	Agents                int     `json:"agents"`
	SecondsToAllRunning   float64 `json:"seconds_to_all_running"`
	ScaleCallSeconds      float64 `json:"scale_call_seconds"`
	BareExecSeconds       float64 `json:"bare_exec_seconds"`
	RatioToBareExec       float64 `json:"ratio_to_bare_exec"`
	TicketToRunningP50Ms  float64 `json:"ticket_to_running_p50_ms"`
	TicketToRunningP99Ms  float64 `json:"ticket_to_running_p99_ms"`
	EtcdWritesPerInstance float64 `json:"etcd_writes_per_instance"`
	// KeyChangesPerInstance counts the keys those writes put or deleted
	// (each is one event to every watcher of its key), and of them the
	// host index entries (hosts/<h>/instances/<id>), which reach every
	// agent's host watch.
	KeyChangesPerInstance float64 `json:"key_changes_per_instance"`
	// EtcdReadsPerInstance counts the Range requests etcd served from
	// the Scale call until all ran (agents' reads, and this program's
	// few), per instance.
	EtcdReadsPerInstance    float64 `json:"etcd_reads_per_instance"`
	IndexChangesPerInstance float64 `json:"host_index_changes_per_instance"`
	ScaleDownSeconds        float64 `json:"scale_down_seconds"`
	// CPU seconds spent from the Scale call until all ran: by the agents
	// (summed; their children's fork/exec counts here too, as the fork
	// happens in the agent), and by this process (etcd is embedded in it).
	AgentsCPUSeconds float64 `json:"agents_cpu_seconds"`
	// Claims sums the agents' claim counters over the scale-up: won, lost
	// (abandoned waits and failed transactions), conflicts (failed
	// claims only) and transactions (claim round trips; one carries up
	// to 16 claims).
	Claims         map[string]float64 `json:"claims"`
	EtcdCPUSeconds float64            `json:"etcd_and_bench_cpu_seconds"`
	// MachineBusy is the fraction of all CPUs' time not idle from the
	// Scale call until all ran (from /proc/stat): near 1 means the start
	// was CPU-bound, well below 1 that something waited.
	MachineBusy float64 `json:"machine_busy"`
}

// Idle is measured with the largest N running.
type Idle struct {
	Instances            int     `json:"instances"`
	AgentRSSMB           float64 `json:"agent_rss_mb_max"`
	AgentCPUPercent      float64 `json:"agent_cpu_percent_max"`
	IdleSeconds          float64 `json:"idle_window_seconds"`
	IdleEtcdWrites       int64   `json:"idle_etcd_writes"`
	CrashToRunningP50Ms  float64 `json:"crash_to_running_p50_ms"`
	CrashToRunningSample int     `json:"crash_to_running_samples"`
}

// Report is the whole output.
type Report struct {
	Machine string   `json:"machine"`
	Results []Result `json:"results,omitempty"`
	Idle    *Idle    `json:"idle,omitempty"`
	// Deploy is the -deploy comparison (then Results and Idle are empty).
	Deploy *DeployResult `json:"deploy,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	ns := flag.String("n", "100,1000", "comma-separated instance counts")
	agents := flag.Int("agents", 3, "agents (subprocesses)")
	visorBin := flag.String("visor", "", "visor binary (default: build ./cmd/visor)")
	idle := flag.Duration("idle", 20*time.Second, "idle measurement window at the largest N")
	profile := flag.String("profile", "", "write each agent's CPU profile of every scale-up (the first -profile-seconds) into this directory")
	profileFor := flag.Duration("profile-seconds", 5*time.Second, "length of the -profile CPU profiles")
	deployN := flag.Int("deploy", 0, "instead of -n: time a rolling deploy of this many instances (max-parallel -deploy-parallel, min-healthy 0) against a scale-up of as many fresh ones")
	deployPar := flag.Int("deploy-parallel", 10, "max-parallel of the -deploy deployment")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "visor-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	bin := *visorBin
	if bin == "" {
		bin = filepath.Join(work, "visor")
		out, err := exec.Command("go", "build", "-o", bin, "./cmd/visor").CombinedOutput()
		if err != nil {
			return fmt.Errorf("build visor: %v\n%s", err, out)
		}
	}
	cport, pport := freePort(), freePort()
	srv, err := embedetcd.Start(ctx, embedetcd.Config{
		Dir:       filepath.Join(work, "etcd"),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", cport),
		PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", pport),
		Unsafe:    false,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	reg := registry.New(cli, "/visor/", hclog.NewNullLogger())

	var procs []*exec.Cmd
	var sockets []string // the agents' API sockets
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			_ = p.Wait()
		}
	}()
	for i := 0; i < *agents; i++ {
		lo := 20000 + i*3000
		dataDir := filepath.Join(work, fmt.Sprintf("agent-%d", i))
		sockets = append(sockets, filepath.Join(dataDir, "run", "agent.sock"))
		cmd := exec.Command(bin, "agent", "--endpoints", srv.Endpoint(),
			"-host", fmt.Sprintf("bench-%d", i), "-data-dir", dataDir, "-run-dir", filepath.Join(dataDir, "run"),
			"-http-addr", "off", "-cgroups", "none", "-log-level", "warn", "-stop-on-exit", "-enable-pprof", "-allow-root-instances",
			// The benchmark measures the claim and start pipeline, not
			// admission: no slot bound, no start rate limit in the way.
			"-capacity", "unlimited", "-start-rate", "100000", "-start-burst", "1000",
			"-port-range", fmt.Sprintf("%d-%d", lo, lo+2999))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
	}
	if err := waitFor(ctx, time.Minute, func() bool {
		hs, err := reg.Hosts(ctx)
		return err == nil && len(hs) == *agents
	}); err != nil {
		return fmt.Errorf("agents did not register: %w", err)
	}

	if _, err := reg.RegisterApp(ctx, registry.App{Name: "bench"}); err != nil {
		return err
	}
	for _, rev := range []string{"v1", "v2"} {
		if _, err := reg.RegisterRevision(ctx, registry.Revision{App: "bench", Name: rev, Dir: work}); err != nil {
			return err
		}
	}
	if _, err := reg.SetProcType(ctx, registry.ProcType{App: "bench", Name: "sleep", Command: "exec /bin/sleep 3600",
		Restart: registry.RestartPolicy{InitialDelay: registry.Duration(time.Millisecond)}}); err != nil {
		return err
	}

	rep := Report{Machine: machine()}
	if *deployN > 0 {
		scale := func() (Result, error) { return scaleUp(ctx, reg, cli, *deployN, procs) }
		if rep.Deploy, err = benchDeploy(ctx, reg, cli, *deployN, *deployPar, scale); err != nil {
			return err
		}
		return printReport(rep)
	}
	counts := strings.Split(*ns, ",")
	for i, s := range counts {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-n: %q is not a positive count", s)
		}
		// The floor is measured right before and right after, and averaged,
		// because the machine's load drifts.
		floorBefore := bareExec(n)
		claims0 := scrapeClaims(sockets)
		var profiles sync.WaitGroup
		if *profile != "" {
			for i, sock := range sockets {
				out := filepath.Join(*profile, fmt.Sprintf("agent-%d-n%d.pprof", i, n))
				profiles.Go(func() { fetchProfile(sock, *profileFor, out) })
			}
		}
		r, err := scaleUp(ctx, reg, cli, n, procs)
		profiles.Wait()
		if err != nil {
			return err
		}
		claims1 := scrapeClaims(sockets)
		for k, v := range claims1 {
			claims1[k] = v - claims0[k]
		}
		r.Claims = claims1
		if i == len(counts)-1 {
			id, err := measureIdle(ctx, reg, cli, procs, n, *idle)
			if err != nil {
				return err
			}
			rep.Idle = id
		}
		rev, err := reg.CurrentRevision(ctx)
		if err != nil {
			return err
		}
		running := watchRunning(ctx, reg, rev)
		if err := running.seed(ctx, reg); err != nil {
			return err
		}
		t0 := time.Now()
		if _, err := reg.Scale(ctx, "bench", "v1", "sleep", 0); err != nil {
			return err
		}
		err = running.until(5*time.Minute, 0)
		running.stop()
		if err != nil {
			return fmt.Errorf("scale down: %w", err)
		}
		r.ScaleDownSeconds = time.Since(t0).Seconds()
		r.BareExecSeconds = (floorBefore + bareExec(n)) / 2
		r.RatioToBareExec = r.SecondsToAllRunning / r.BareExecSeconds
		rep.Results = append(rep.Results, r)
	}
	return printReport(rep)
}

func printReport(rep Report) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func scaleUp(ctx context.Context, reg *registry.Registry, cli *clientv3.Client, n int, agents []*exec.Cmd) (Result, error) {
	r := Result{N: n, Agents: len(agents)}
	agentCPU := func() float64 {
		sum := 0.0
		for _, a := range agents {
			sum += cpuSeconds(a.Process.Pid)
		}
		return sum
	}
	cpuA0, cpuE0 := agentCPU(), cpuSeconds(os.Getpid())
	reads0 := etcdRequests("Range")
	busy0, total0 := machineTicks()
	rev0, err := reg.CurrentRevision(ctx)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	running := watchRunning(ctx, reg, rev0)
	defer running.stop()
	if _, err := reg.Scale(ctx, "bench", "v1", "sleep", n); err != nil {
		return r, err
	}
	r.ScaleCallSeconds = time.Since(t0).Seconds()
	if err := running.until(5*time.Minute, n); err != nil {
		return r, fmt.Errorf("scale to %d: %w (running %d)", n, err, countRunning(ctx, reg))
	}
	r.SecondsToAllRunning = time.Since(t0).Seconds()
	r.EtcdReadsPerInstance = (etcdRequests("Range") - reads0) / float64(n)
	r.AgentsCPUSeconds, r.EtcdCPUSeconds = agentCPU()-cpuA0, cpuSeconds(os.Getpid())-cpuE0
	if busy1, total1 := machineTicks(); total1 > total0 {
		r.MachineBusy = float64(busy1-busy0) / float64(total1-total0)
	}
	if got := countRunning(ctx, reg); got != n {
		return r, fmt.Errorf("scale to %d: the watch saw all running, a list shows %d", n, got)
	}
	// Let the last completions land before counting writes.
	_ = waitFor(ctx, 30*time.Second, func() bool {
		ts, err := reg.Tickets(ctx)
		return err == nil && len(ts) == 0
	})
	rev1, err := reg.CurrentRevision(ctx)
	if err != nil {
		return r, err
	}
	r.EtcdWritesPerInstance = float64(rev1-rev0) / float64(n)
	keys, index, err := keyChanges(ctx, cli, "/visor/", rev0+1, rev1)
	if err != nil {
		return r, err
	}
	r.KeyChangesPerInstance, r.IndexChangesPerInstance = float64(keys)/float64(n), float64(index)/float64(n)
	insts, err := reg.AppInstances(ctx, "bench")
	if err != nil {
		return r, err
	}
	var lat []float64
	for _, in := range insts {
		if in.State == registry.InstanceRunning && !in.Created.IsZero() {
			lat = append(lat, float64(in.Since.Sub(in.Created).Microseconds())/1000)
		}
	}
	r.TicketToRunningP50Ms, r.TicketToRunningP99Ms = pct(lat, 0.5), pct(lat, 0.99)
	return r, nil
}

// etcdRequests returns how many requests of gRPC method (Range, Txn, ...)
// the embedded etcd member has handled, from its metrics in this
// process's default Prometheus registry.
func etcdRequests(method string) float64 {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_handled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "grpc_method" && l.GetValue() == method {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// keyChanges counts the key changes in revisions from..to (inclusive)
// from etcd's history, and of them the host index entries under prefix.
// It watches the whole key space, so every revision has its events.
func keyChanges(ctx context.Context, cli *clientv3.Client, prefix string, from, to int64) (total, index int, err error) {
	if to < from {
		return 0, 0, nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range cli.Watch(wctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(from)) {
		if err := resp.Err(); err != nil {
			return total, index, err
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision > to {
				return total, index, nil
			}
			total++
			rest, ok := strings.CutPrefix(string(ev.Kv.Key), prefix+"hosts/")
			if ok && strings.Contains(rest, "/instances/") {
				index++
			}
			if ev.Kv.ModRevision == to && resp.Events[len(resp.Events)-1] == ev {
				return total, index, nil
			}
		}
	}
	return total, index, ctx.Err()
}

func measureIdle(ctx context.Context, reg *registry.Registry, cli *clientv3.Client, agents []*exec.Cmd, n int, window time.Duration) (*Idle, error) {
	id := &Idle{Instances: n, IdleSeconds: window.Seconds()}
	settle := time.NewTimer(2 * time.Second)
	<-settle.C
	rev0, err := reg.CurrentRevision(ctx)
	if err != nil {
		return nil, err
	}
	cpu0 := map[int]float64{}
	for _, a := range agents {
		cpu0[a.Process.Pid] = cpuSeconds(a.Process.Pid)
	}
	t := time.NewTimer(window)
	<-t.C
	for _, a := range agents {
		pid := a.Process.Pid
		id.AgentCPUPercent = max(id.AgentCPUPercent, 100*(cpuSeconds(pid)-cpu0[pid])/window.Seconds())
		id.AgentRSSMB = max(id.AgentRSSMB, rssMB(pid))
	}
	rev1, err := reg.CurrentRevision(ctx)
	if err != nil {
		return nil, err
	}
	id.IdleEtcdWrites = rev1 - rev0

	// Crash-to-running: SIGKILL a few instances, time until running again
	// with a new pid (zero backoff in the proc type).
	insts, err := reg.AppInstances(ctx, "bench")
	if err != nil {
		return nil, err
	}
	var lat []float64
	for _, in := range insts {
		if len(lat) >= 20 {
			break
		}
		if in.State != registry.InstanceRunning || in.PID == 0 {
			continue
		}
		t0 := time.Now()
		_ = syscall.Kill(in.PID, syscall.SIGKILL)
		err := waitFor(ctx, 30*time.Second, func() bool {
			got, err := reg.Instance(ctx, in.ID)
			return err == nil && got.State == registry.InstanceRunning && got.PID != in.PID
		})
		if err != nil {
			return nil, fmt.Errorf("crash-to-running of %s: %w", in.ID, err)
		}
		lat = append(lat, float64(time.Since(t0).Microseconds())/1000)
	}
	id.CrashToRunningP50Ms = pct(lat, 0.5)
	id.CrashToRunningSample = len(lat)
	return id, nil
}

// bareExec starts n /bin/sleep processes with a plain os/exec loop and
// returns the seconds until all are started; then kills and reaps them.
func bareExec(n int) float64 {
	cmds := make([]*exec.Cmd, 0, n)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		c := exec.Command("/bin/sleep", "3600")
		if err := c.Start(); err == nil {
			cmds = append(cmds, c)
		}
	}
	d := time.Since(t0).Seconds()
	for _, c := range cmds {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	return d
}

// unixClient is an HTTP client for an agent's API socket.
func unixClient(sock string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

// fetchProfile saves the agent's CPU profile over the next d to out.
func fetchProfile(sock string, d time.Duration, out string) {
	resp, err := unixClient(sock, d+30*time.Second).Get(fmt.Sprintf("http://agent/debug/pprof/profile?seconds=%d", int(d.Seconds())))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}

// scrapeClaims sums the claim counters of the agents' /metrics, read over
// their unix sockets.
func scrapeClaims(sockets []string) map[string]float64 {
	out := map[string]float64{}
	names := map[string]string{
		"visor_agent_claims_won_total":         "won",
		"visor_agent_claims_lost_total":        "lost",
		"visor_agent_claim_conflicts_total":    "conflicts",
		"visor_agent_claim_transactions_total": "transactions",
	}
	for _, sock := range sockets {
		resp, err := unixClient(sock, 5*time.Second).Get("http://agent/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && names[f[0]] != "" {
				v, _ := strconv.ParseFloat(f[1], 64)
				out[names[f[0]]] += v
			}
		}
		resp.Body.Close()
	}
	return out
}

func countRunning(ctx context.Context, reg *registry.Registry) int {
	insts, err := reg.AppInstances(ctx, "bench")
	if err != nil {
		return -1
	}
	n := 0
	for _, in := range insts {
		if in.State == registry.InstanceRunning {
			n++
		}
	}
	return n
}

// runningWatch counts the running instances of app "bench" from the
// registry's events. The benchmark waits on it instead of listing every
// instance every few milliseconds: on a 2-core machine that poll (a
// 1000-instance range decoded 50 times a second) took CPU from the agents
// and etcd being measured.
type runningWatch struct {
	ctx    context.Context
	stop   context.CancelFunc // ends the watch
	events <-chan registry.Event
	state  map[string]registry.InstanceState
}

// watchRunning follows the registry's events after revision rev.
func watchRunning(ctx context.Context, reg *registry.Registry, rev int64) *runningWatch {
	ctx, stop := context.WithCancel(ctx)
	return &runningWatch{ctx: ctx, stop: stop, events: reg.WatchEvents(ctx, rev+1), state: map[string]registry.InstanceState{}}
}

// seed takes the instances as listed now (after the watch's start
// revision; the events replayed over them converge to the latest state).
func (w *runningWatch) seed(ctx context.Context, reg *registry.Registry) error {
	insts, err := reg.AppInstances(ctx, "bench")
	if err != nil {
		return err
	}
	for _, in := range insts {
		w.state[in.ID] = in.State
	}
	return nil
}

func (w *runningWatch) count() int {
	n := 0
	for _, st := range w.state {
		if st == registry.InstanceRunning {
			n++
		}
	}
	return n
}

// until waits for exactly want running instances, or d.
func (w *runningWatch) until(d time.Duration, want int) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	running := w.count()
	for running != want {
		select {
		case <-deadline.C:
			return fmt.Errorf("timed out after %s", d)
		case <-w.ctx.Done():
			return w.ctx.Err()
		case ev, ok := <-w.events:
			if !ok {
				return fmt.Errorf("event watch ended")
			}
			if ev.Err != nil || ev.App != "bench" || (ev.Type != registry.InstanceChanged && ev.Type != registry.InstanceDeleted) {
				continue
			}
			was := w.state[ev.Instance] == registry.InstanceRunning
			if ev.Type == registry.InstanceDeleted {
				delete(w.state, ev.Instance)
			} else {
				w.state[ev.Instance] = ev.State
			}
			switch now := w.state[ev.Instance] == registry.InstanceRunning; {
			case now && !was:
				running++
			case was && !now:
				running--
			}
		}
	}
	return nil
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			return fmt.Errorf("timed out after %s", d)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	return v[int(p*float64(len(v)-1))]
}

// machineTicks returns the busy and total CPU ticks of the machine from the
// first line of /proc/stat (idle and iowait count as not busy).
func machineTicks() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func rssMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

func machine() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
			break
		}
	}
	return fmt.Sprintf("%s, %d cpus", model, numCPU())
}

func numCPU() int {
	n := 0
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "processor") {
			n++
		}
	}
	return n
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
