package fault

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// Agent timing used by every scenario (the targets assume these).
const (
	agentTTL   = 5 * time.Second
	lostGrace  = 5 * time.Second
	reconcileP = 5 * time.Second
)

// proc is one OS process the suite started (an etcd member or an agent).
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) signal(sig syscall.Signal) {
	if p != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// stop sends sig and waits up to d for the exit, then kills.
func (p *proc) stop(sig syscall.Signal, d time.Duration) {
	if p == nil {
		return
	}
	p.signal(sig)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.signal(syscall.SIGKILL)
		<-p.done
	}
}

// fleet is the suite's world: network, etcd members, agents, the registry
// client, and the recorders that watch the process table and the registry.
type fleet struct {
	t      *testing.T
	net    *network
	dir    string
	bin    string
	sleep  string // sleep(1), the workload
	runID  string
	prefix string
	ctx    context.Context
	cli    *clientv3.Client
	reg    *registry.Registry
	hosts  []string

	mu      sync.Mutex // guards members and agents
	members map[int]*proc
	agents  map[string]*proc

	samp *sampler
	rec  *recorder
	bg   sync.WaitGroup // sampler and recorder goroutines
}

// newFleet builds the network, starts the etcd cluster and the recorders;
// agents are started by the scenarios. Cleanup kills everything.
func newFleet(t *testing.T, hosts []string) *fleet {
	t.Helper()
	requireNetAdmin(t)
	bin := e2etest.VisorBinary(t)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("the workload is sleep(1): %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{
		t:       t,
		dir:     t.TempDir(),
		bin:     bin,
		sleep:   sleep,
		runID:   "fault" + strconv.FormatInt(time.Now().UnixNano(), 36),
		prefix:  "/visor-fault/",
		ctx:     ctx,
		hosts:   hosts,
		members: map[int]*proc{},
		agents:  map[string]*proc{},
	}
	// Registered before anything starts, so it runs after every other
	// cleanup of this test: no process of ours outlives the test.
	t.Cleanup(func() {
		cancel()
		f.bg.Wait()
		f.killAll()
	})
	f.net = newNetwork(t, hosts)
	t.Cleanup(func() {
		if t.Failed() {
			f.dumpLogs()
		}
		f.killAll() // before the network goes
	})
	for i := 1; i <= 3; i++ {
		f.startMember(i)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	f.cli = cli
	f.reg = registry.New(cli, f.prefix, hclog.NewNullLogger())
	if !waitFor(60*time.Second, 100*time.Millisecond, func() bool { return f.etcdLeader() > 0 }) {
		t.Fatal("etcd cluster has no leader after 60s")
	}
	rev, err := f.reg.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.samp = newSampler(f.workloads)
	f.rec = &recorder{}
	f.bg.Add(2)
	go func() { defer f.bg.Done(); f.samp.run(ctx) }()
	go func() { defer f.bg.Done(); f.rec.run(ctx, f.reg, rev+1) }()
	return f
}

func (f *fleet) endpoints() []string {
	var eps []string
	for i := 1; i <= 3; i++ {
		eps = append(eps, f.clientURL(i))
	}
	return eps
}

func (f *fleet) clientURL(i int) string {
	return "http://" + f.net.memberAddr(i).String() + ":2379"
}

// startMember starts (or restarts, on the same data dir) etcd member i.
func (f *fleet) startMember(i int) {
	f.t.Helper()
	var cluster []string
	for j := 1; j <= 3; j++ {
		cluster = append(cluster, fmt.Sprintf("e%d=http://%s:2380", j, f.net.memberAddr(j)))
	}
	env := append(os.Environ(),
		etcdModeEnv+"=1",
		etcdNameEnv+"="+fmt.Sprintf("e%d", i),
		etcdDirEnv+"="+filepath.Join(f.dir, fmt.Sprintf("etcd%d", i)),
		etcdClientEnv+"="+f.clientURL(i),
		etcdPeerEnv+"="+fmt.Sprintf("http://%s:2380", f.net.memberAddr(i)),
		etcdClusterEnv+"="+strings.Join(cluster, ","),
		ownerEnv+"="+strconv.Itoa(os.Getpid()),
	)
	cmd := exec.Command(proctest.Binary())
	cmd.Env = env
	p := f.launch(fmt.Sprintf("etcd%d", i), cmd)
	f.mu.Lock()
	f.members[i] = p
	f.mu.Unlock()
}

// launch starts cmd with its output appended to <dir>/<name>.log.
func (f *fleet) launch(name string, cmd *exec.Cmd) *proc {
	f.t.Helper()
	dir := f.dir
	if d := os.Getenv(logDirEnv); d != "" {
		dir = d
	}
	logf, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		f.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		f.t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	f.bg.Add(1)
	go func() {
		defer f.bg.Done()
		defer close(p.done)
		_ = cmd.Wait()
		logf.Close()
	}()
	return p
}

// startAgent starts `visor agent` for host inside its namespace, with its
// state in a directory kept across restarts.
func (f *fleet) startAgent(host string) {
	f.t.Helper()
	dataDir := filepath.Join(f.dir, host)
	args := []string{"netns", "exec", f.net.hosts[host].ns, f.bin, "agent",
		"--endpoints", strings.Join(f.endpoints(), ","),
		"--prefix", f.prefix,
		"-host", host,
		"-data-dir", dataDir,
		"-run-dir", filepath.Join(dataDir, "run"),
		"-http-addr", "off",
		"-ttl", agentTTL.String(),
		"-lost-grace", lostGrace.String(),
		"-reconcile-interval", reconcileP.String(),
		"-cgroups", "none",
		"-log-level", "debug",
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), ownerEnv+"="+strconv.Itoa(os.Getpid()))
	p := f.launch("agent-"+host, cmd)
	f.mu.Lock()
	f.agents[host] = p
	f.mu.Unlock()
}

// killAgent kills host's agent with SIGKILL and waits for it.
func (f *fleet) killAgent(host string) {
	f.mu.Lock()
	p := f.agents[host]
	f.mu.Unlock()
	p.stop(syscall.SIGKILL, 10*time.Second)
}

// killMember kills etcd member i with sig and waits for it.
func (f *fleet) killMember(i int, sig syscall.Signal) {
	f.mu.Lock()
	p := f.members[i]
	f.mu.Unlock()
	p.stop(sig, 10*time.Second)
}

// killAll kills every agent, member and workload of this run.
func (f *fleet) killAll() {
	f.mu.Lock()
	var ps []*proc
	for _, p := range f.agents {
		ps = append(ps, p)
	}
	for _, p := range f.members {
		ps = append(ps, p)
	}
	f.mu.Unlock()
	for _, p := range ps {
		p.stop(syscall.SIGKILL, 10*time.Second)
	}
	me := os.Getpid()
	for _, pid := range ownedProcesses(func(owner int) bool { return owner == me }) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pids := range f.workloads() {
		for _, pid := range pids {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// dumpLogs logs the tail of every agent's log (on failure).
func (f *fleet) dumpLogs() {
	for _, h := range f.hosts {
		dir := f.dir
		if d := os.Getenv(logDirEnv); d != "" {
			dir = d
		}
		b, err := os.ReadFile(filepath.Join(dir, "agent-"+h+".log"))
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		if len(lines) > 150 {
			lines = lines[len(lines)-150:]
		}
		f.t.Logf("agent %s log (tail):\n%s", h, strings.Join(lines, "\n"))
	}
}

// workloads scans /proc for this run's instance processes: instance id ->
// pids, sorted.
func (f *fleet) workloads() map[string][]int {
	return e2etest.Workloads(f.runID)
}

// killHostWorkloads kills the workload processes of the given instances
// (a host crash takes its processes with it).
func (f *fleet) killHostWorkloads(ids map[string]registry.Instance) int {
	n := 0
	procs := f.workloads()
	for id := range ids {
		for _, pid := range procs[id] {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			n++
		}
	}
	return n
}

// app registers an app whose proc "web" runs sleep(1), as test/bench does.
// The workload is deliberately light: re-executing this test binary as
// the sleeper cost 50 ms of CPU and 21 MB per start (1.2 s and 50 MB under
// -race: the etcd server packages' init), which made a replacement's time
// mostly the workload's own start-up. The processes are still found and
// cleaned up by their environment (VISOR_E2E, ownerEnv).
func (f *fleet) app(name string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	check := func(err error) {
		f.t.Helper()
		if err != nil {
			f.t.Fatal(err)
		}
	}
	_, err := f.reg.RegisterApp(ctx, registry.App{Name: name})
	check(err)
	check(f.reg.SetEnv(ctx, name, map[string]string{
		"VISOR_E2E": f.runID, proctest.EnvVar: "1", ownerEnv: strconv.Itoa(os.Getpid()),
	}))
	_, err = f.reg.RegisterRevision(ctx, registry.Revision{App: name, Name: "v1", Dir: os.TempDir()})
	check(err)
	_, err = f.reg.SetProcType(ctx, registry.ProcType{
		App:         name,
		Name:        "web",
		Command:     "exec " + f.sleep + " 3600",
		StopTimeout: registry.Duration(3 * time.Second),
	})
	check(err)
}

// scale sets app's desired scale.
func (f *fleet) scale(app string, n int) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	if _, err := f.reg.Scale(ctx, app, "v1", "web", n); err != nil {
		f.t.Fatal(err)
	}
}

// etcdLeader returns the index (1..3) of the etcd leader member, or 0.
func (f *fleet) etcdLeader() int {
	for i := 1; i <= 3; i++ {
		ctx, cancel := context.WithTimeout(f.ctx, time.Second)
		st, err := f.cli.Status(ctx, f.clientURL(i))
		cancel()
		if err != nil || st.Leader == 0 {
			continue
		}
		if st.Header.MemberId == st.Leader {
			return i
		}
	}
	return 0
}

// leaderAgent returns the host of the reconciler leader, or "".
func (f *fleet) leaderAgent() string {
	ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
	defer cancel()
	resp, err := f.cli.Get(ctx, f.prefix+"leader/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// running returns the registry's running instances of app by id (nil if
// the registry cannot be read).
func (f *fleet) running(app string) map[string]registry.Instance {
	ctx, cancel := context.WithTimeout(f.ctx, 3*time.Second)
	defer cancel()
	insts, err := f.reg.AppInstances(ctx, app)
	if err != nil {
		return nil
	}
	out := map[string]registry.Instance{}
	for _, in := range insts {
		if in.State == registry.InstanceRunning {
			out[in.ID] = in
		}
	}
	return out
}

// settledProblem says why the fleet is not settled at want (app -> desired
// scale), or "" when it is: every app has exactly its desired number of
// running instances, each with exactly one live process whose pid the
// registry records, no other workload process lives, and no ticket is
// left. snap receives the running instances of every app.
func (f *fleet) settledProblem(want map[string]int, snap map[string]registry.Instance) string {
	procs := f.workloads()
	total := 0
	for app, n := range want {
		got := f.running(app)
		if got == nil {
			return "registry unreadable"
		}
		if len(got) != n {
			return fmt.Sprintf("%s: %d running in the registry, want %d (states: %s)", app, len(got), n, f.stateCounts(app))
		}
		for id, in := range got {
			pids := procs[id]
			if len(pids) != 1 {
				return fmt.Sprintf("instance %s has processes %v", id, pids)
			}
			if pids[0] != in.PID {
				return fmt.Sprintf("instance %s: registry pid %d, process %d", id, in.PID, pids[0])
			}
			snap[id] = in
		}
		total += n
	}
	if np := countProcs(procs); np != total {
		return fmt.Sprintf("%d workload processes, want %d", np, total)
	}
	ctx, cancel := context.WithTimeout(f.ctx, 3*time.Second)
	defer cancel()
	ts, err := f.reg.Tickets(ctx)
	if err != nil {
		return "tickets unreadable"
	}
	if len(ts) != 0 {
		return fmt.Sprintf("%d tickets left (first: %s %s of %s)", len(ts), ts[0].Op, ts[0].ID, ts[0].Instance)
	}
	return ""
}

func countProcs(procs map[string][]int) int {
	n := 0
	for _, p := range procs {
		n += len(p)
	}
	return n
}

// waitSettled waits up to d for the fleet to settle at want and returns the
// running instances and when it settled; on timeout it fails the test.
func (f *fleet) waitSettled(want map[string]int, d time.Duration) (map[string]registry.Instance, time.Time) {
	f.t.Helper()
	var snap map[string]registry.Instance
	var why string
	ok := waitFor(d, 100*time.Millisecond, func() bool {
		snap = map[string]registry.Instance{}
		why = f.settledProblem(want, snap)
		return why == ""
	})
	if !ok {
		f.t.Fatalf("not settled after %s: %s", d, why)
	}
	return snap, time.Now()
}

// sampler samples the process table every 100 ms and accumulates, per
// instance, the time it ran with two or more processes, and per app the
// processes beyond the desired scale.
type sampler struct {
	scan func() map[string][]int

	mu     sync.Mutex // guards the fields below
	dup    map[string]time.Duration
	want   map[string]int // app -> desired scale, for excess
	excess time.Duration  // process-seconds beyond each app's desired scale
	worstX int            // most excess processes at one sample
}

func newSampler(scan func() map[string][]int) *sampler {
	s := &sampler{scan: scan}
	s.reset(nil)
	return s
}

// reset starts a new measuring window in which want (app -> desired
// scale) holds; nil measures no excess.
func (s *sampler) reset(want map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dup = map[string]time.Duration{}
	s.want = want
	s.excess = 0
	s.worstX = 0
}

// appOf returns the app of an instance id ("<app>-<proc>-<suffix>"; the
// suite's app names have no dash).
func appOf(id string) string {
	app, _, _ := strings.Cut(id, "-")
	return app
}

// run samples until ctx ends.
func (s *sampler) run(ctx context.Context) {
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tk.C:
			procs := s.scan()
			dt := now.Sub(last)
			last = now
			s.mu.Lock()
			if s.want != nil {
				per := map[string]int{}
				for id, pids := range procs {
					per[appOf(id)] += len(pids)
				}
				x := 0
				for app, n := range per {
					x += max(0, n-s.want[app])
				}
				s.excess += time.Duration(x) * dt
				s.worstX = max(s.worstX, x)
			}
			for id, pids := range procs {
				if len(pids) >= 2 {
					s.dup[id] += dt
				}
			}
			s.mu.Unlock()
		}
	}
}

// excessSeconds returns the process-seconds run beyond the desired scale
// in the window, and the most excess processes seen at once.
func (s *sampler) excessSeconds() (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.excess, s.worstX
}

// duplicates returns the duplicate-seconds of the window, the worst single
// instance's, and how many instances ran twice at some point.
func (s *sampler) duplicates() (total, worst time.Duration, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.dup {
		total += d
		worst = max(worst, d)
		n++
	}
	return total, worst, n
}

// timedEvent is a registry event and when the recorder received it.
type timedEvent struct {
	at time.Time
	ev registry.Event
}

// recorder keeps every registry event from the fleet's start.
type recorder struct {
	mu     sync.Mutex // guards events and errs
	events []timedEvent
	errs   []error
}

func (r *recorder) run(ctx context.Context, reg *registry.Registry, from int64) {
	for ev := range reg.WatchEvents(ctx, from) {
		r.mu.Lock()
		if ev.Err != nil {
			if ctx.Err() == nil {
				r.errs = append(r.errs, ev.Err)
			}
		} else {
			r.events = append(r.events, timedEvent{at: time.Now(), ev: ev})
		}
		r.mu.Unlock()
	}
}

// first returns when the first event after since matching pred arrived.
func (r *recorder) first(since time.Time, pred func(registry.Event) bool) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, te := range r.events {
		if !te.at.Before(since) && pred(te.ev) {
			return te.at, true
		}
	}
	return time.Time{}, false
}

// illegalTransitions checks every instance's consecutive states, in
// revision order, with registry.ValidTransition.
func (r *recorder) illegalTransitions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := map[string]registry.Event{}
	var bad []string
	for _, te := range r.events {
		ev := te.ev
		if ev.Type != registry.InstanceChanged || ev.Deleted {
			continue
		}
		if prev, ok := last[ev.Instance]; ok {
			if err := registry.ValidTransition(prev.State, ev.State); err != nil {
				bad = append(bad, fmt.Sprintf("instance %s (host %s) rev %d -> %d: %v", ev.Instance, ev.Host, prev.Revision, ev.Revision, err))
			}
		}
		last[ev.Instance] = ev
	}
	return bad
}

// watchErrors returns the watch errors seen (outages show up here).
func (r *recorder) watchErrors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// contextTimeout derives a bounded context from the fleet's.
func contextTimeout(f *fleet, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(f.ctx, d)
}

// stateCounts summarizes app's instances by state, for failure messages.
func (f *fleet) stateCounts(app string) string {
	ctx, cancel := contextTimeout(f, 3*time.Second)
	defer cancel()
	insts, err := f.reg.AppInstances(ctx, app)
	if err != nil {
		return err.Error()
	}
	per := map[registry.InstanceState]int{}
	for _, in := range insts {
		per[in.State]++
	}
	return countsLine(per)
}
