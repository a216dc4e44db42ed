package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// app is the scenarios' application: sleep(1) run as appUser.
const (
	app   = "web"
	scale = 30
	// numHosts is the number of guests TestVM runs (h1, h2, h3).
	numHosts = 3
)

// TestVM boots three Debian guests (systemd as PID 1) from the saved
// template, installs Visor from its .deb on each and runs the scenarios of
// issue 16 in order, each asserting through etcd and inside the guests. A
// scenario that fails ends the run (the later ones build on it); 5 and 6
// overlap (scenarioPowerOffReboot). Run at once, 3 and 4 (restart on h1,
// upgrade on h3) took as long as one after the other: 3's check that the
// fleet settled waits for h3's upgrade.
func TestVM(t *testing.T) {
	f := newFleet(t, true, numHosts)
	for _, sc := range []scenario{
		{"1-fresh-install", scenarioInstall},
		{"2-scale-30", scenarioScale},
		{"3-agent-restart", scenarioRestart},
		{"4-package-upgrade", scenarioUpgrade},
		{"5+6-power-off-and-reboot", scenarioPowerOffReboot},
		{"7-stop-purge", scenarioPurge},
	} {
		if !sc.runIn(t, f) {
			return
		}
	}
}

// scenario is one step of TestVM.
type scenario struct {
	name string
	run  func(t *testing.T, f *fleet)
}

// runIn runs sc as a subtest of t, logs its outcome and time, and reports
// whether it passed.
func (sc scenario) runIn(t *testing.T, f *fleet) bool {
	begin := time.Now()
	ok := t.Run(sc.name, func(t *testing.T) { sc.run(t, f) })
	t.Logf("scenario %s: %s (%s)", sc.name, map[bool]string{true: "passed", false: "FAILED"}[ok], time.Since(begin).Round(100*time.Millisecond))
	return ok
}

// within returns a context for one step of a scenario, bounded by d scaled.
func (f *fleet) within(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(f.ctx, testtime.Scaled(d))
}

// waitFor polls cond every tick until it returns "" or ctx ends; the error
// carries cond's last answer.
func waitFor(ctx context.Context, tick time.Duration, cond func(ctx context.Context) string) error {
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		why := cond(ctx)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s", ctx.Err(), why)
		case <-tk.C:
		}
	}
}

// unitProps returns `systemctl show` properties of visor-agent in g.
func unitProps(ctx context.Context, g *guest, props ...string) (map[string]string, error) {
	out, err := g.must(ctx, "systemctl show visor-agent.service -p "+strings.Join(props, " -p "))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, "=")
		m[k] = v
	}
	return m, nil
}

// scenarioInstall: dpkg -i on each host, configuration the documented way,
// systemctl enable --now: the unit is active when it returns, only after
// the agent's registry session was up (READY=1), and every host is in
// etcd and in `visor hosts` (run in a guest with the agents' client
// certificate).
func scenarioInstall(t *testing.T, f *fleet) {
	ctx, cancel := f.within(15 * time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(f.guests))
	for i, g := range f.guests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = func() error {
				begin := time.Now()
				if err := f.installDeb(ctx, g, "0.0.1~vm1"); err != nil {
					return err
				}
				installed := time.Since(begin)
				cfg := agentConfig(g)
				if _, err := g.must(ctx, "cat >/etc/visor/agent.json <<'EOT'\n"+cfg+"EOT\nsystemctl enable --now visor-agent"); err != nil {
					return err
				}
				t.Logf("%s: package installed after %s (waiting for it included), agent active after %s", g.name,
					installed.Round(100*time.Millisecond), time.Since(begin).Round(100*time.Millisecond))
				// Where the time from dpkg -i to active goes under emulation:
				// systemd's reloads (the postinst's, enable's) and the
				// agent's start until READY=1.
				if out, err := g.must(ctx, "journalctl -b -o short-precise --no-pager | grep -E 'Reloading finished|(Starting|Started) visor-agent|registry session up' | awk '{t=$3; $1=$2=$3=$4=\"\"; sub(/^ +/, \"\"); print t, $0}'"); err == nil {
					t.Logf("%s: the journal from the install on:\n%s", g.name, out)
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	hosts, err := f.reg.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]registry.Host{}
	for _, h := range hosts {
		byID[h.ID] = h
	}
	for _, g := range f.guests {
		p, err := unitProps(ctx, g, "Type", "NotifyAccess", "ActiveState", "SubState", "MainPID", "UnitFileState")
		if err != nil {
			t.Fatal(err)
		}
		if p["Type"] != "notify" || p["NotifyAccess"] != "main" || p["ActiveState"] != "active" || p["SubState"] != "running" || p["UnitFileState"] != "enabled" {
			t.Fatalf("%s: visor-agent right after enable --now: %v; want Type=notify NotifyAccess=main active running enabled", g.name, p)
		}
		h, ok := byID[g.name]
		if !ok {
			t.Fatalf("%s: no host record in etcd (hosts: %v)", g.name, hosts)
		}
		if h.Version != "v0.0.1-vm1" {
			t.Errorf("%s: host record version %q, want v0.0.1-vm1", g.name, h.Version)
		}
		// systemd logs "Started" when READY=1 arrives: not before the
		// agent's session (its host record's start) was up.
		out, err := g.must(ctx, `journalctl -u visor-agent -o short-unix --no-pager | grep -m1 ' Started visor-agent'`)
		if err != nil {
			t.Fatal(err)
		}
		sec, err := strconv.ParseFloat(strings.Fields(out)[0], 64)
		if err != nil {
			t.Fatalf("%s: journal line %q: %v", g.name, out, err)
		}
		started := time.Unix(0, int64(sec*1e9))
		if started.Before(h.Started) {
			t.Errorf("%s: systemd logged Started at %s, before the agent's session began (%s)", g.name, started, h.Started)
		}
		if p["MainPID"] == "0" {
			t.Errorf("%s: no main pid", g.name)
		}
	}
	out, err := f.guests[0].must(ctx, fmt.Sprintf("VISOR_ENDPOINTS=%s VISOR_PREFIX=%s VISOR_CA_FILE=/etc/visor-vm/etcd-ca.pem VISOR_CERT_FILE=/etc/visor-vm/agent.pem VISOR_KEY_FILE=/etc/visor-vm/agent-key.pem visor hosts -o json 2>/tmp/hosts.err || { cat /tmp/hosts.err; exit 1; }",
		strings.Join(etcdEndpoints(), ","), prefix))
	if err != nil {
		t.Fatal(err)
	}
	var listed []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("visor hosts -o json: %v:\n%s", err, out)
	}
	names := map[string]bool{}
	for _, h := range listed {
		names[h.ID] = true
	}
	if len(listed) != numHosts {
		t.Errorf("visor hosts lists %d hosts, want %d:\n%s", len(listed), numHosts, out)
	}
	for _, g := range f.guests {
		if !names[g.name] {
			t.Errorf("visor hosts does not list %s:\n%s", g.name, out)
		}
	}
	t.Logf("visor hosts -o json (by the agents' certificate) lists %v", names)
}

// registerApp registers the scenarios' app: sleep 3600 as appUser, with
// memory, CPU and pid limits.
func (f *fleet) registerApp(ctx context.Context) error {
	if _, err := f.reg.RegisterApp(ctx, registry.App{Name: app}); err != nil {
		return err
	}
	if _, err := f.reg.RegisterRevision(ctx, registry.Revision{App: app, Name: "v1", Dir: "/tmp"}); err != nil {
		return err
	}
	_, err := f.reg.SetProcType(ctx, registry.ProcType{
		App: app, Name: "web", Command: "exec sleep 3600", User: appUser,
		StopTimeout: registry.Duration(3 * time.Second),
		Limits:      registry.Limits{MemoryBytes: appMemory, CPUMillis: appCPU, Pids: appPids},
	})
	return err
}

// running returns the registry's running instances of the app by id.
func (f *fleet) running(ctx context.Context) (map[string]registry.Instance, error) {
	insts, err := f.reg.AppInstances(ctx, app)
	if err != nil {
		return nil, err
	}
	out := map[string]registry.Instance{}
	for _, in := range insts {
		if in.State == registry.InstanceRunning {
			out[in.ID] = in
		}
	}
	return out, nil
}

// guestProcs returns, per guest, the app's processes: pid -> "uid cgroup
// starttime" read from /proc inside the guest (every process running as
// appUser).
func (f *fleet) guestProcs(ctx context.Context, g *guest) (map[int]string, error) {
	// One pgrep, then bash builtins only (read): a fork per process costs
	// much under emulation. Field 22 of stat (start time) is the 20th
	// after the ")" that ends the command name.
	out, err := g.must(ctx, fmt.Sprintf(`u=$(id -u %s) || exit 1
for p in $(pgrep -u "$u"); do
	read -r st </proc/$p/stat 2>/dev/null || continue
	read -r cg </proc/$p/cgroup 2>/dev/null || continue
	read -r comm </proc/$p/comm 2>/dev/null || continue
	f=(${st##*) })
	echo "$p $u ${cg#0::} ${f[19]} $comm"
done`, appUser))
	if err != nil {
		return nil, err
	}
	m := map[int]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		pidS, rest, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidS)
		if err != nil {
			continue
		}
		m[pid] = rest
	}
	return m, nil
}

// names are the guests' names (h1, h2, ...).
func (f *fleet) names() []string {
	var out []string
	for _, g := range f.guests {
		out = append(out, g.name)
	}
	return out
}

// except is names without name.
func (f *fleet) except(name string) []string {
	var out []string
	for _, n := range f.names() {
		if n != name {
			out = append(out, n)
		}
	}
	return out
}

func (f *fleet) guest(name string) *guest {
	for _, g := range f.guests {
		if g.name == name {
			return g
		}
	}
	return nil
}

// settled says why the app is not settled at n running instances, or "":
// n running in etcd on live hosts, each with exactly one process as
// appUser in its host's guest whose pid the registry records, and no
// other such process.
func (f *fleet) settled(ctx context.Context, n int, live []string, snap map[string]registry.Instance) string {
	run, err := f.running(ctx)
	if err != nil {
		return err.Error()
	}
	if len(run) != n {
		return fmt.Sprintf("%d running in etcd, want %d", len(run), n)
	}
	perHost := map[string][]registry.Instance{}
	for _, in := range run {
		perHost[in.Host] = append(perHost[in.Host], in)
	}
	for h := range perHost {
		if !contains(live, h) {
			return fmt.Sprintf("%d instances on %s, which should run none", len(perHost[h]), h)
		}
	}
	// The guests are asked at once: each answers at its own emulated pace.
	procsOf := make([]map[int]string, len(live))
	errs := make([]error, len(live))
	var wg sync.WaitGroup
	for i, h := range live {
		wg.Add(1)
		go func() { defer wg.Done(); procsOf[i], errs[i] = f.guestProcs(ctx, f.guest(h)) }()
	}
	wg.Wait()
	for i, h := range live {
		procs, err := procsOf[i], errs[i]
		if err != nil {
			return err.Error()
		}
		if len(procs) != len(perHost[h]) {
			return fmt.Sprintf("%s: %d processes as %s, %d instances in etcd", h, len(procs), appUser, len(perHost[h]))
		}
		for _, in := range perHost[h] {
			if _, ok := procs[in.PID]; !ok {
				return fmt.Sprintf("%s: instance %s pid %d not running as %s", h, in.ID, in.PID, appUser)
			}
		}
	}
	for id, in := range run {
		snap[id] = in
	}
	return ""
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// scenarioScale: 30 instances across the hosts, each a process running
// as appUser in its cgroup below the agent unit's (Delegate=yes,
// DelegateSubgroup=agent: see checkLayout) with the app's limits.
func scenarioScale(t *testing.T, f *fleet) {
	ctx, cancel := f.within(10 * time.Minute)
	defer cancel()
	if err := f.registerApp(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Scale(ctx, app, "v1", "web", scale); err != nil {
		t.Fatal(err)
	}
	snap := map[string]registry.Instance{}
	if err := waitFor(ctx, time.Second, func(ctx context.Context) string {
		return f.settled(ctx, scale, f.names(), snap)
	}); err != nil {
		t.Fatalf("scale %d: %v", scale, err)
	}
	per := map[string]int{}
	for _, in := range snap {
		per[in.Host]++
	}
	for _, g := range f.guests {
		if per[g.name] == 0 {
			t.Errorf("instances per host %v: want every host used", per)
			break
		}
	}
	for _, g := range f.guests {
		f.checkLayout(ctx, t, g)
	}
	t.Logf("30 instances settled: per host %v", per)
}

// scenarioRestart: systemctl restart visor-agent on h1 keeps its
// instances: same pids, same process start times, 0 restarts; the new
// agent starts (no status=219/CGROUP although the instances' cgroups with
// controllers stay in the unit's subtree) in <unit>/agent and the
// instances are still in <unit>/visor.
func scenarioRestart(t *testing.T, f *fleet) {
	ctx, cancel := f.within(15 * time.Minute)
	defer cancel()
	g := f.guest("h1")
	before, beforeProcs, oldPID := f.hostState(ctx, t, g)
	if _, err := g.must(ctx, "systemctl restart visor-agent"); err != nil {
		t.Fatal(err)
	}
	p, err := unitProps(ctx, g, "ActiveState", "MainPID", "NRestarts")
	if err != nil {
		t.Fatal(err)
	}
	if p["ActiveState"] != "active" || p["MainPID"] == oldPID || p["NRestarts"] != "0" {
		t.Fatalf("after restart: %v (old main pid %s)", p, oldPID)
	}
	f.checkKept(ctx, t, g, before, beforeProcs)
	f.checkLayout(ctx, t, g)
}

// hostState returns g's running instances (etcd), its app processes
// (guest) and the agent's main pid.
func (f *fleet) hostState(ctx context.Context, t *testing.T, g *guest) (map[string]registry.Instance, map[int]string, string) {
	t.Helper()
	run, err := f.running(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mine := map[string]registry.Instance{}
	for id, in := range run {
		if in.Host == g.name {
			mine[id] = in
		}
	}
	if len(mine) == 0 {
		t.Fatalf("%s runs no instance", g.name)
	}
	procs, err := f.guestProcs(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	p, err := unitProps(ctx, g, "MainPID")
	if err != nil {
		t.Fatal(err)
	}
	return mine, procs, p["MainPID"]
}

// checkKept waits until the restarted agent of g has re-registered, then
// checks that its instances are the same records, pids and processes
// (start times) with no restart counted, and nothing else runs.
func (f *fleet) checkKept(ctx context.Context, t *testing.T, g *guest, before map[string]registry.Instance, beforeProcs map[int]string) {
	t.Helper()
	snap := map[string]registry.Instance{}
	if err := waitFor(ctx, time.Second, func(ctx context.Context) string {
		return f.settled(ctx, scale, f.names(), snap)
	}); err != nil {
		t.Fatal(err)
	}
	for id, b := range before {
		a, ok := snap[id]
		switch {
		case !ok:
			t.Errorf("instance %s (pid %d) no longer running", id, b.PID)
		case a.PID != b.PID || a.Host != b.Host:
			t.Errorf("instance %s: was pid %d on %s, now pid %d on %s", id, b.PID, b.Host, a.PID, a.Host)
		case sumRestarts(a) != sumRestarts(b):
			t.Errorf("instance %s: restarts %v, before %v", id, a.Restarts, b.Restarts)
		}
	}
	procs, err := f.guestProcs(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for pid, info := range beforeProcs {
		if procs[pid] != info {
			changed = append(changed, fmt.Sprintf("%d: %q -> %q", pid, info, procs[pid]))
		}
	}
	sort.Strings(changed)
	if len(changed) > 0 || len(procs) != len(beforeProcs) {
		t.Errorf("%s: app processes changed (%d before, %d now): %v", g.name, len(beforeProcs), len(procs), changed)
	}
}

func sumRestarts(in registry.Instance) int {
	n := 0
	for _, v := range in.Restarts {
		n += v
	}
	return n
}
