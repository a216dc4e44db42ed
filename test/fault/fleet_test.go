package fault

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/netnstest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
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

// stop sends sig and waits up to d for the exit, then kills it and waits
// up to d again; it says so when the process still has not exited (a
// process stuck in the kernel), instead of waiting for ever.
func (p *proc) stop(sig syscall.Signal, d time.Duration) error {
	if p == nil {
		return nil
	}
	p.signal(sig)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	p.signal(syscall.SIGKILL)
	t.Reset(d)
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("%s (pid %d) has not exited %s after SIGKILL (%s)", p.name, p.cmd.Process.Pid, d, procState(p.cmd.Process.Pid))
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
	// ctx ends at the suite's deadline: teardownMargin before the test
	// binary's own (go test -timeout), so that the suite fails with a
	// message and tears down in order instead of being killed mid-way.
	ctx    context.Context
	cancel context.CancelFunc
	cli    *clientv3.Client
	reg    *registry.Registry
	hosts  []string
	// hostNS is the network namespace inode of every agent host: the
	// workload scan looks only at processes in these.
	hostNS map[uint64]bool

	mu      sync.Mutex // guards members and agents
	members map[int]*proc
	agents  map[string]*proc

	samp *sampler
	rec  *recorder
	bg   sync.WaitGroup // sampler, recorder and process-waiting goroutines
}

// teardownMargin is how long before the test binary's deadline the suite
// stops waiting for anything, leaving the time to tear down in order.
var teardownMargin = testtime.Scaled(time.Minute)

// procKillWait bounds the wait for a killed process to exit.
var procKillWait = testtime.Scaled(10 * time.Second)

// newFleet builds the network, starts the etcd cluster and the recorders;
// agents are started by the scenarios. One cleanup, registered before
// anything starts, tears everything down in order (teardown).
func newFleet(t *testing.T, hosts []string) *fleet {
	t.Helper()
	netnstest.Require(t, "fault-injection suite")
	bin := e2etest.VisorBinary(t)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatalf("the workload is sleep(1): %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if dl, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(context.Background(), dl.Add(-teardownMargin))
	}
	f := &fleet{
		t:       t,
		dir:     t.TempDir(),
		bin:     bin,
		sleep:   sleep,
		runID:   "fault" + strconv.FormatInt(time.Now().UnixNano(), 36),
		prefix:  "/visor-fault/",
		ctx:     ctx,
		cancel:  cancel,
		hosts:   hosts,
		hostNS:  map[uint64]bool{},
		members: map[int]*proc{},
		agents:  map[string]*proc{},
	}
	t.Cleanup(f.teardown)
	f.net = newNetwork(t, hosts)
	for _, h := range f.net.hosts {
		ino, err := netnstest.Inode(h.ns)
		if err != nil {
			t.Fatal(err)
		}
		f.hostNS[ino] = true
	}
	for i := 1; i <= 3; i++ {
		f.startMember(i)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   f.endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(), // members down on purpose are no news
		// The test process stays in the root namespace; its connections
		// to etcd are made in the hub (network.dial).
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(f.net.dial)},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.cli = cli
	f.reg = registry.New(cli, f.prefix, hclog.NewNullLogger())
	if err := f.waitFor(testtime.Scaled(60*time.Second), 100*time.Millisecond, func(ctx context.Context) bool { return f.etcdLeader(ctx) > 0 }); err != nil {
		t.Fatalf("etcd cluster has no leader: %v", err)
	}
	rev, err := f.reg.CurrentRevision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.samp = newSampler(func() map[string][]int { return f.workloads(ctx) })
	f.rec = &recorder{}
	f.bg.Add(2)
	go func() { defer f.bg.Done(); f.samp.run(ctx) }()
	go func() { defer f.bg.Done(); f.rec.run(ctx, f.reg, rev+1) }()
	return f
}

// teardown stops everything, in order: the recorders and waits, the
// agents (so that none acts on what follows), the etcd members, the
// registry client, then the network: the janitor kills the workloads left
// in the namespaces and deletes the namespaces. Every step is bounded.
func (f *fleet) teardown() {
	t := f.t
	if t.Failed() {
		f.dumpLogs()
	}
	f.cancel()
	f.mu.Lock()
	var agents, members []*proc
	for _, p := range f.agents {
		agents = append(agents, p)
	}
	for _, p := range f.members {
		members = append(members, p)
	}
	f.mu.Unlock()
	for _, ps := range [][]*proc{agents, members} {
		for _, p := range ps {
			p.signal(syscall.SIGKILL)
		}
		for _, p := range ps {
			if err := p.stop(syscall.SIGKILL, procKillWait); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
	}
	if f.cli != nil {
		f.cli.Close()
	}
	if f.net != nil {
		f.net.teardown(t)
	}
	waited := make(chan struct{})
	go func() { defer close(waited); f.bg.Wait() }()
	tm := time.NewTimer(procKillWait)
	defer tm.Stop()
	select {
	case <-waited:
	case <-tm.C:
		// Only a process that SIGKILL did not end (reported above) or a
		// recorder stuck on the closed client can hold this.
		t.Errorf("teardown: the suite's goroutines have not ended %s after everything was stopped", procKillWait)
	}
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

// waitFor polls cond every tick until it holds, d passes or the suite's
// deadline comes. cond gets a context that ends with the wait and must
// return soon after it does, so that one slow check (a registry call, a
// process-table scan on a thrashing machine) cannot stretch the wait. The
// error says which limit was hit.
func (f *fleet) waitFor(d, tick time.Duration, cond func(ctx context.Context) bool) error {
	ctx, cancel := context.WithTimeout(f.ctx, d)
	defer cancel()
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for !cond(ctx) {
		select {
		case <-ctx.Done():
			if f.ctx.Err() != nil {
				return fmt.Errorf("the suite's deadline passed (%s before go test -timeout, kept for teardown)", teardownMargin)
			}
			return fmt.Errorf("timed out after %s", d)
		case <-tk.C:
		}
	}
	return nil
}

// pause waits d (a fault's length), or until the suite's deadline.
func (f *fleet) pause(d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-f.ctx.Done():
		return fmt.Errorf("the suite's deadline passed during a %s pause", d)
	}
}

// startMember starts (or restarts, on the same data dir) etcd member i in
// the hub namespace.
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
	)
	cmd := exec.Command("ip", "netns", "exec", f.net.hub, proctest.Binary())
	cmd.Env = env
	p := f.launch(fmt.Sprintf("etcd%d", i), cmd)
	f.mu.Lock()
	f.members[i] = p
	f.mu.Unlock()
}

// launch starts cmd with its output appended to <dir>/<name>.log. The
// process gets SIGKILL when the test process dies (`ip netns exec` execs
// its command, which keeps the parent-death signal).
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
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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
		"-allow-root-instances", // the suite's proc types have no user
	}
	cmd := exec.Command("ip", args...)
	p := f.launch("agent-"+host, cmd)
	f.mu.Lock()
	f.agents[host] = p
	f.mu.Unlock()
}

// killAgent kills host's agent with SIGKILL and waits (bounded) for it.
func (f *fleet) killAgent(host string) {
	f.t.Helper()
	f.mu.Lock()
	p := f.agents[host]
	f.mu.Unlock()
	if err := p.stop(syscall.SIGKILL, procKillWait); err != nil {
		f.t.Fatal(err)
	}
}

// killMember kills etcd member i with sig and waits (bounded) for it.
func (f *fleet) killMember(i int, sig syscall.Signal) {
	f.t.Helper()
	f.mu.Lock()
	p := f.members[i]
	f.mu.Unlock()
	if err := p.stop(sig, procKillWait); err != nil {
		f.t.Fatal(err)
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

// workloads returns this run's instance processes: instance id -> pids,
// sorted. Only processes in the hosts' namespaces are looked at (a
// readlink each); only their environment is read (VISOR_E2E=<run>,
// VISOR_INSTANCE). Reading every process's environment, as this did
// before, takes each process's memory lock: on a machine thrashing with
// tens of thousands of processes one scan took minutes, and the waits
// that call it hung far past their limits. It stops early when ctx ends.
func (f *fleet) workloads(ctx context.Context) map[string][]int {
	out := map[string][]int{}
	tag := []byte("VISOR_E2E=" + f.runID + "\x00")
	for pid := range netnstest.PidsIn(ctx, f.hostNS) {
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err != nil || !bytes.Contains(env, tag) || !netnstest.ProcessAlive(pid) {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if id, ok := bytes.CutPrefix(kv, []byte("VISOR_INSTANCE=")); ok {
				out[string(id)] = append(out[string(id)], pid)
			}
		}
	}
	for _, pids := range out {
		sort.Ints(pids)
	}
	return out
}

// killHostWorkloads kills the workload processes of the given instances
// (a host crash takes its processes with it).
func (f *fleet) killHostWorkloads(ids map[string]registry.Instance) int {
	n := 0
	procs := f.workloads(f.ctx)
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
// mostly the workload's own start-up. The processes are found by their
// namespace and environment (VISOR_E2E) and cleaned up by namespace.
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
		"VISOR_E2E": f.runID, proctest.EnvVar: "1",
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
func (f *fleet) etcdLeader(ctx context.Context) int {
	for i := 1; i <= 3; i++ {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
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
func (f *fleet) leaderAgent(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := f.cli.Get(ctx, f.prefix+"leader/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// running returns the registry's running instances of app by id (nil if
// the registry cannot be read).
func (f *fleet) running(ctx context.Context, app string) map[string]registry.Instance {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
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
func (f *fleet) settledProblem(ctx context.Context, want map[string]int, snap map[string]registry.Instance) string {
	procs := f.workloads(ctx)
	total := 0
	for app, n := range want {
		got := f.running(ctx, app)
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
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
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

// waitSettled waits up to d (scaled) for the fleet to settle at want and
// returns the running instances and when it settled; on timeout it fails
// the test, saying what was still wrong.
func (f *fleet) waitSettled(want map[string]int, d time.Duration) (map[string]registry.Instance, time.Time) {
	f.t.Helper()
	var snap map[string]registry.Instance
	why := "not checked yet"
	err := f.waitFor(testtime.Scaled(d), 100*time.Millisecond, func(ctx context.Context) bool {
		s := map[string]registry.Instance{}
		p := f.settledProblem(ctx, want, s)
		if ctx.Err() == nil { // a check cut short by the limit says nothing
			snap, why = s, p
		}
		return p == "" && ctx.Err() == nil
	})
	if err != nil {
		f.t.Fatalf("not settled at %v: %v: %s", want, err, why)
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

// stateCounts summarizes app's instances by state, for failure messages.
func (f *fleet) stateCounts(app string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(f.ctx), 3*time.Second)
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
