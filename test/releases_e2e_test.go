package test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// TestReleasesRunSideBySide (issue 17, item 8): a revision carries its own
// process types and env. Against a real agent: v1 and v2 of one app run
// side by side with different commands and env, and changing the app's
// process type after v1 was scaled changes neither what a restart of a v1
// instance runs nor what a new v1 instance runs.
func TestReleasesRunSideBySide(t *testing.T) {
	c := newCluster(t)
	c.startAgent("host-a")
	ctx := c.ctx
	visor := func(args ...string) (stdout, stderr string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, c.bin, append([]string{"--endpoints", strings.Join(c.etcd.Endpoints(), ","), "--prefix", c.prefix}, args...)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			t.Fatalf("visor %s: %v\nstdout %s\nstderr %s", strings.Join(args, " "), err, o.String(), e.String())
		}
		return o.String(), e.String()
	}
	wait := testtime.Scaled(2 * time.Minute).String()

	c.app("rel")
	must(t, err2(c.reg.SetProcType(ctx, registry.ProcType{App: "rel", Name: "web", Command: "exec sleep 3601",
		StopTimeout: registry.Duration(3 * time.Second)})))
	must(t, c.reg.SetEnv(ctx, "rel", map[string]string{"MARK": "one"}))
	visor("scale", "rel", "v1", "web=1", "--wait", "--wait-timeout", wait)

	// The app's next release: another command and env.
	_, stderr := visor("proc", "set", "rel", "web", "--command", "exec sleep 3602")
	if !strings.Contains(stderr, "applies to the next release") {
		t.Errorf("proc set after v1's release: stderr %q, want the note", stderr)
	}
	visor("env", "set", "rel", "MARK=two")
	visor("rev", "register", "rel", "v2", "--from", "v1")
	visor("scale", "rel", "v2", "web=1", "--wait", "--wait-timeout", wait)

	check := func(what string, n int) map[string]registry.Instance {
		t.Helper()
		got := c.waitSettled("rel", n, 2*time.Minute)
		for id, in := range got {
			want := map[string]string{"v1": "3601 one", "v2": "3602 two"}[in.Rev]
			if have := runs(t, in.PID); have != want {
				t.Errorf("%s: instance %s of %s runs %q, want %q", what, id, in.Rev, have, want)
			}
		}
		return got
	}
	before := check("side by side", 2)

	// Changing the app's process type now reaches neither revision.
	visor("proc", "set", "rel", "web", "--command", "exec sleep 3603")
	visor("env", "set", "rel", "MARK=three")
	var v1 registry.Instance
	for _, in := range before {
		if in.Rev == "v1" {
			v1 = in
		}
	}
	visor("restart", v1.ID, "--wait", "--wait-timeout", wait)
	after := check("after a restart of v1", 2)
	if after[v1.ID].PID == v1.PID || after[v1.ID].PID == 0 {
		t.Errorf("restart of %s kept pid %d (now %d)", v1.ID, v1.PID, after[v1.ID].PID)
	}
	// A new v1 instance, started after the change, runs v1's release too.
	visor("scale", "rel", "v1", "web=2", "--wait", "--wait-timeout", wait)
	check("after scaling v1 up", 3)

	out, _ := visor("rev", "show", "rel", "v1", "-o", "json")
	var show struct {
		State string            `json:"state"`
		Procs map[string]string `json:"procs"`
	}
	if err := json.Unmarshal([]byte(out), &show); err != nil || show.State != "released" || show.Procs["web"] != "exec sleep 3601" {
		t.Errorf("rev show rel v1: %v %s", err, out)
	}
}

// runs returns the argument of the sleep that pid runs and its MARK env
// var, "3601 one", read from /proc.
func runs(t *testing.T, pid int) string {
	t.Helper()
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatalf("read cmdline of %d: %v", pid, err)
	}
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatalf("read environ of %d: %v", pid, err)
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	mark := "-"
	for _, kv := range strings.Split(string(env), "\x00") {
		if v, ok := strings.CutPrefix(kv, "MARK="); ok {
			mark = v
		}
	}
	return args[len(args)-1] + " " + mark
}
