package vm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/visorhq/visor/registry"
)

// The limits the scenarios' app declares: every instance's cgroup must
// carry them. Small enough that 30 instances fit on two guests by the
// memory and CPU the agents advertise (512 MB guests, 1 vCPU).
const (
	appMemory = 10 << 20 // bytes
	appCPU    = 25       // thousandths of a core
	appPids   = 16
)

// minSystemd is the first systemd that honours DelegateSubgroup=, which
// the agent's unit sets; the image's systemd comes from backports for it.
const minSystemd = 254

// layout is what checkLayout reads in a guest.
type layout struct {
	systemd  int
	unit     string // the unit's cgroup (ControlGroup)
	mainPID  string
	agent    string            // the agent's own cgroup (/proc/<main pid>/cgroup)
	procs    map[int]procGroup // app processes (as appUser) by pid
	logged   bool              // the agent logged that it uses the unit's delegated subtree
	cgFailed int               // journal lines of a start that failed to set up the cgroup
}

// procGroup is one app process's cgroup and the limits written there.
type procGroup struct {
	cgroup, memMax, cpuMax, pidsMax string
}

// readLayout reads g's systemd version, the agent unit's cgroup, the
// agent's own cgroup, and for each process running as appUser its cgroup
// and that cgroup's memory.max, cpu.max and pids.max, in one command.
func readLayout(ctx context.Context, g *guest) (layout, error) {
	out, err := g.must(ctx, fmt.Sprintf(`set -e
systemctl --version | head -n1 | awk '{print "systemd", $2}'
unit=$(systemctl show -P ControlGroup visor-agent.service)
main=$(systemctl show -P MainPID visor-agent.service)
echo "unit $unit"
echo "main $main"
read -r cg </proc/$main/cgroup
echo "agent ${cg#0::}"
if journalctl -u visor-agent --no-pager | grep -q 'using the delegated subtree of the agent.s unit'; then echo "logged 1"; else echo "logged 0"; fi
echo "cgfailed $(journalctl -u visor-agent --no-pager | grep -c 'CGROUP' || true)"
u=$(id -u %s)
for p in $(pgrep -u "$u" || true); do
	read -r cg </proc/$p/cgroup 2>/dev/null || continue
	d=/sys/fs/cgroup${cg#0::}
	read -r m <$d/memory.max || m=-
	read -r c <$d/cpu.max || c=-
	read -r n <$d/pids.max || n=-
	echo "proc $p|${cg#0::}|$m|$c|$n"
done`, appUser))
	if err != nil {
		return layout{}, err
	}
	l := layout{procs: map[int]procGroup{}}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		key, rest, _ := strings.Cut(line, " ")
		switch key {
		case "systemd":
			if l.systemd, err = strconv.Atoi(rest); err != nil {
				return l, fmt.Errorf("%s: systemd version %q", g.name, rest)
			}
		case "unit":
			l.unit = rest
		case "main":
			l.mainPID = rest
		case "agent":
			l.agent = rest
		case "logged":
			l.logged = rest == "1"
		case "cgfailed":
			l.cgFailed, _ = strconv.Atoi(rest)
		case "proc":
			f := strings.Split(rest, "|") // pid|cgroup|memory.max|cpu.max|pids.max
			if len(f) != 5 {
				return l, fmt.Errorf("%s: %q", g.name, line)
			}
			pid, err := strconv.Atoi(f[0])
			if err != nil {
				return l, fmt.Errorf("%s: %q", g.name, line)
			}
			l.procs[pid] = procGroup{cgroup: f[1], memMax: f[2], cpuMax: f[3], pidsMax: f[4]}
		}
	}
	return l, nil
}

// checkLayout checks the cgroup layout on g, systemd with the agent unit's
// Delegate=yes and DelegateSubgroup=agent: the agent runs in
// <unit>/agent, every instance of g (registry) is a process in
// <unit>/visor/<instance id> carrying the app's limits, no other app
// process runs, the agent logged that it uses the unit's delegated
// subtree, and no start of the unit failed to set up its cgroup (systemd's
// status=219/CGROUP).
func (f *fleet) checkLayout(ctx context.Context, t *testing.T, g *guest) {
	t.Helper()
	l, err := readLayout(ctx, g)
	if err != nil {
		t.Fatal(err)
	}
	if l.systemd < minSystemd {
		t.Fatalf("%s runs systemd %d, which ignores DelegateSubgroup=; the image should have %d or later (image/mkimage.sh)", g.name, l.systemd, minSystemd)
	}
	if l.unit != "/system.slice/visor-agent.service" {
		t.Errorf("%s: visor-agent's cgroup is %q", g.name, l.unit)
	}
	if want := l.unit + "/agent"; l.agent != want {
		t.Errorf("%s: the agent (pid %s) runs in cgroup %s, want %s (DelegateSubgroup=agent)", g.name, l.mainPID, l.agent, want)
	}
	if !l.logged {
		t.Errorf("%s: the agent did not log that it uses its unit's delegated subtree", g.name)
	}
	if l.cgFailed > 0 {
		t.Errorf("%s: %d journal lines of visor-agent mention CGROUP (a start that failed with status=219/CGROUP?)", g.name, l.cgFailed)
	}
	run, err := f.running(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byPID := map[int]registry.Instance{}
	for _, in := range run {
		if in.Host == g.name {
			byPID[in.PID] = in
		}
	}
	if len(l.procs) != len(byPID) {
		t.Errorf("%s: %d processes as %s, %d instances in etcd", g.name, len(l.procs), appUser, len(byPID))
	}
	cpuWant := func(max string) bool {
		q, p, ok := strings.Cut(max, " ")
		quota, err1 := strconv.Atoi(q)
		period, err2 := strconv.Atoi(p)
		return ok && err1 == nil && err2 == nil && quota == appCPU*period/1000
	}
	for pid, pg := range l.procs {
		in, ok := byPID[pid]
		if !ok {
			t.Errorf("%s: process %d as %s in %s is no instance of this host in etcd", g.name, pid, appUser, pg.cgroup)
			continue
		}
		if want := l.unit + "/visor/" + in.ID; pg.cgroup != want {
			t.Errorf("%s: instance %s (pid %d) in cgroup %s, want %s", g.name, in.ID, pid, pg.cgroup, want)
		}
		if pg.memMax != strconv.Itoa(appMemory) || !cpuWant(pg.cpuMax) || pg.pidsMax != strconv.Itoa(appPids) {
			t.Errorf("%s: instance %s's cgroup has memory.max %s, cpu.max %q, pids.max %s; want %d, %d/1000 of a core, %d",
				g.name, in.ID, pg.memMax, pg.cpuMax, pg.pidsMax, appMemory, appCPU, appPids)
		}
	}
	t.Logf("%s: systemd %d, agent in %s, %d instances in %s/visor/<id> with their limits", g.name, l.systemd, l.agent, len(l.procs), l.unit)
}
