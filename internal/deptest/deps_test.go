package deptest

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/visorhq/visor/"

// rules lists, per package, the dependencies it must not have (directly or
// through others). A rule ending in "/" forbids a whole tree.
var rules = []struct {
	pkg       string
	forbidden []string
	why       string
}{
	{"registry", []string{"os/exec", mod + "supervisor", mod + "supervisor/", mod + "agent"},
		"the registry knows nothing about running processes"},
	{"supervisor", []string{"go.etcd.io/", mod + "registry", mod + "agent", mod + "discovery"},
		"the supervisor runs processes and knows nothing about etcd"},
	{"supervisor/restart", []string{"go.etcd.io/", mod + "registry", mod + "agent", "os/exec"},
		"restart decisions are pure"},
	{"supervisor/cgroup", []string{"go.etcd.io/", mod + "registry", mod + "agent", mod + "supervisor/logfile"},
		"cgroup is a leaf of the supervisor"},
	{"supervisor/logfile", []string{"go.etcd.io/", mod + "registry", mod + "agent", mod + "supervisor/cgroup"},
		"logfile is a leaf of the supervisor"},
	{"supervisor/shellline", []string{"go.etcd.io/", mod + "registry", mod + "agent", mod + "supervisor", mod + "supervisor/cgroup", mod + "supervisor/logfile", mod + "supervisor/restart"},
		"shellline only parses command lines; agent and supervisor share it"},
	{"internal/backoff", []string{"go.etcd.io/", "os/exec", mod + "registry", mod + "supervisor", mod + "supervisor/", mod + "agent", mod + "discovery"},
		"backoff is a leaf that registry, agent and supervisor share"},
	{"discovery", []string{"os/exec", mod + "supervisor", mod + "agent", mod + "registry"},
		"discovery stands beside the registry, on etcd only"},
	{"ui", []string{"os/exec", mod + "agent", mod + "supervisor", mod + "supervisor/", mod + "internal/etcdtest", mod + "internal/proctest"},
		"the dashboard reads the registry; what only the agent knows comes through ui.Local"},
	{"systemd", []string{"go.etcd.io/", mod + "agent", mod + "registry", mod + "supervisor"},
		"service glue never imports the agent"},
	{"cmd/visor", []string{mod + "internal/etcdtest", mod + "internal/proctest", mod + "internal/e2etest", mod + "internal/testtime"},
		"test harnesses stay out of the binary"},
	{"agent", []string{mod + "internal/etcdtest", mod + "internal/proctest", mod + "internal/testtime"},
		"test harnesses stay out of the agent"},
}

func TestPackageBoundaries(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list; skipped in -short")
	}
	for _, r := range rules {
		t.Run(r.pkg, func(t *testing.T) {
			t.Parallel()
			out, err := exec.Command("go", "list", "-deps", mod+r.pkg).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", r.pkg, err, out)
			}
			deps := strings.Fields(string(out))
			if len(deps) < 5 {
				t.Fatalf("go list -deps %s listed only %v", r.pkg, deps)
			}
			for _, d := range deps {
				for _, f := range r.forbidden {
					if d == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(d, f)) {
						t.Errorf("%s depends on %s: %s", r.pkg, d, r.why)
					}
				}
			}
		})
	}
}
