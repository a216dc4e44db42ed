package agent

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// TestAgentRefusesRootInstances: an agent with RefuseRootInstances (the
// production default of `visor agent`) releases the start ticket of a proc
// type that would run as root, with a reason naming the fix, and runs the
// same command with an unprivileged user.
func TestAgentRefusesRootInstances(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: an agent not running as root runs no instance as root")
	}
	f := newFixture(t)
	f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true; c.RefuseRootInstances = true })
	for _, p := range []registry.ProcType{
		{App: "rooted", Name: "web", Command: "sleep 3600"},
		{App: "unpriv", Name: "web", Command: "sleep 3600", User: "nobody"},
	} {
		_, err := f.reg.RegisterApp(f.ctx, registry.App{Name: p.App})
		must(t, err)
		_, err = f.reg.RegisterRevision(f.ctx, registry.Revision{App: p.App, Name: "v1", Dir: os.TempDir()})
		must(t, err)
		p.StopTimeout = registry.Duration(2 * time.Second)
		_, err = f.reg.SetProcType(f.ctx, p)
		must(t, err)
		_, err = f.reg.Scale(f.ctx, p.App, "v1", "web", 1)
		must(t, err)
	}
	const want = "refused to run as root"
	proctest.WaitFor(t, 30*time.Second, "root start refused with a reason", func() bool {
		ts, err := f.reg.Tickets(f.ctx)
		must(t, err)
		var reasons []string
		for _, tk := range ts {
			if tk.App == "rooted" {
				reasons = append(reasons, tk.Reasons...)
			}
		}
		insts, err := f.reg.AppInstances(f.ctx, "rooted")
		must(t, err)
		for _, in := range insts {
			if in.State == registry.InstanceRunning {
				t.Fatalf("instance %s runs as root", in.ID)
			}
			if in.State == registry.InstanceFailed {
				reasons = append(reasons, in.Reason)
			}
		}
		r := strings.Join(reasons, "; ")
		if r != "" && (!strings.Contains(r, want) || !strings.Contains(r, "-allow-root-instances")) {
			t.Fatalf("reasons %q do not say %q and how to allow it", r, want)
		}
		return r != ""
	})
	for _, in := range f.waitRunning(t, "unpriv", 1) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(in.PID) + "/status")
		must(t, err)
		for line := range strings.SplitSeq(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" && f[1] == "0" {
				t.Fatalf("instance %s of a proc type with user nobody runs as uid 0", in.ID)
			}
		}
	}
}
