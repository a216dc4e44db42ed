package main

import (
	"strings"
	"testing"

	"github.com/visorhq/visor/registry"
)

// TestDeployBadInputNoRegistry (issue 18, bad input): strategy values
// that do not parse or mean nothing, missing arguments and a bad
// --wait-timeout are usage errors (exit 2) naming the flag, found before
// the registry is dialled (the endpoint is unreachable), so nothing can
// have been written.
func TestDeployBadInputNoRegistry(t *testing.T) {
	dead := []string{"--endpoints", "127.0.0.1:1", "--timeout", "1s"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"deploy missing rev", []string{"deploy", "demo"}, []string{"missing argument", "APP REV"}},
		{"deploy extra", []string{"deploy", "demo", "v2", "v3"}, []string{"unexpected argument", `"v3"`}},
		{"max-parallel zero", []string{"deploy", "demo", "v2", "--max-parallel", "0"}, []string{`max-parallel "0"`, "at least 1"}},
		{"max-parallel negative", []string{"deploy", "demo", "v2", "--max-parallel", "-2"}, []string{`max-parallel "-2"`, "negative"}},
		{"max-parallel not a number", []string{"deploy", "demo", "v2", "--max-parallel", "two"}, []string{"max-parallel", "two", "whole number"}},
		{"canary negative", []string{"deploy", "demo", "v2", "--canary", "-1"}, []string{`canary "-1"`, "negative"}},
		{"min-healthy does not parse", []string{"deploy", "demo", "v2", "--min-healthy", "soon"}, []string{"min-healthy", "soon", "duration"}},
		{"min-healthy negative", []string{"deploy", "demo", "v2", "--min-healthy", "-1s"}, []string{"min-healthy", "negative"}},
		{"healthy-deadline zero", []string{"deploy", "demo", "v2", "--healthy-deadline", "0s"}, []string{"healthy-deadline", "more than 0"}},
		{"progress-deadline zero", []string{"deploy", "demo", "v2", "--progress-deadline", "0"}, []string{"progress-deadline", "more than 0"}},
		{"progress-deadline no unit", []string{"deploy", "demo", "v2", "--progress-deadline", "10"}, []string{"progress-deadline", "duration"}},
		{"healthy deadline not above min healthy", []string{"deploy", "demo", "v2", "--min-healthy", "1m", "--healthy-deadline", "30s"}, []string{"healthy deadline", "min healthy"}},
		{"empty proc", []string{"deploy", "demo", "v2", "--proc", "web,"}, []string{"--proc", "empty"}},
		{"deploy bad wait timeout", []string{"deploy", "demo", "v2", "--wait", "--wait-timeout", "0s"}, []string{"--wait-timeout", "positive"}},
		{"status missing", []string{"deploy", "status"}, []string{"missing argument", "APP"}},
		{"pause missing", []string{"deploy", "pause"}, []string{"missing argument", "APP"}},
		{"promote extra", []string{"deploy", "promote", "a", "b"}, []string{"unexpected argument", `"b"`}},
		{"deploys missing", []string{"deploys"}, []string{"missing argument", "APP"}},
		{"rollback missing", []string{"rollback"}, []string{"missing argument", "APP"}},
		{"rollback extra", []string{"rollback", "a", "v1", "v2"}, []string{"unexpected argument", `"v2"`}},
		{"rollback bad wait timeout", []string{"rollback", "a", "--wait", "--wait-timeout", "-1s"}, []string{"--wait-timeout", "positive"}},
		{"proc set max-parallel zero", []string{"proc", "set", "web", "web", "--max-parallel", "0"}, []string{`max-parallel "0"`, "at least 1"}},
		{"proc set min-healthy bad", []string{"proc", "set", "web", "web", "--min-healthy", "x"}, []string{"min-healthy", "duration"}},
		{"proc set canary negative", []string{"proc", "set", "web", "web", "--canary", "-3"}, []string{"canary", "negative"}},
		{"env set wait without rollout", []string{"env", "set", "web", "A=1", "--wait"}, []string{"--wait", "--rollout"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{}, dead...), tc.args...)
			checkFailure(t, runCLI(args...), 2, tc.want, args)
		})
	}
}

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		done, total int
		want        string
	}{
		{0, 12, "[----------]"},
		{6, 12, "[#####-----]"},
		{12, 12, "[##########]"},
		{13, 12, "[##########]"},
		{-1, 12, "[----------]"},
		{0, 0, "[##########]"},
	} {
		if got := progressBar(tc.done, tc.total, 10); got != tc.want {
			t.Errorf("progressBar(%d, %d) = %q, want %q", tc.done, tc.total, got, tc.want)
		}
	}
}

// TestNewDeployOut: the status counts the old and new revisions'
// instances by state (placed on a host, healthy = running, unhealthy =
// backoff or failed) and their desired scale, per process type.
func TestNewDeployOut(t *testing.T) {
	d := registry.Deployment{App: "demo", ID: "d-1", Rev: "v2", State: registry.DeployRunning,
		Procs: []registry.DeployProc{{Proc: "web", Count: 4, From: map[string]int{"v1": 4}, Healthy: 1}}}
	inst := func(rev, proc string, st registry.InstanceState) registry.Instance {
		return registry.Instance{App: "demo", Rev: rev, Proc: proc, State: st}
	}
	insts := []registry.Instance{
		inst("v1", "web", registry.InstanceRunning), inst("v1", "web", registry.InstanceRunning),
		inst("v1", "web", registry.InstanceRunning), inst("v1", "web", registry.InstanceStopping),
		inst("v2", "web", registry.InstanceRunning), inst("v2", "web", registry.InstanceStarting),
		inst("v2", "web", registry.InstanceBackoff), inst("v2", "web", registry.InstancePending),
		inst("v2", "worker", registry.InstanceRunning), // another proc type: not counted
	}
	scales := []registry.ScaleEntry{{App: "demo", Rev: "v1", Proc: "web", Desired: 3}, {App: "demo", Rev: "v2", Proc: "web", Desired: 3},
		{App: "demo", Rev: "v2", Proc: "worker", Desired: 1}}
	out := newDeployOut(d, insts, scales)
	if len(out.Procs) != 1 {
		t.Fatalf("procs %+v", out.Procs)
	}
	p := out.Procs[0]
	if want := (instCounts{Desired: 3, Placed: 3, Healthy: 3}); p.Old != want {
		t.Errorf("old %+v, want %+v", p.Old, want)
	}
	if want := (instCounts{Desired: 3, Placed: 3, Healthy: 1, Unhealthy: 1}); p.New != want {
		t.Errorf("new %+v, want %+v", p.New, want)
	}
	if strings.Join(out.From, ",") != "v1" || p.Progress.Healthy != 1 {
		t.Errorf("from %v progress %+v", out.From, p.Progress)
	}
	var sb strings.Builder
	writeDeployStatus(&sb, out, true)
	for _, want := range []string{"d-1", "v1 -> v2", "running", "[#####---------------] 1/4 healthy"} {
		if !strings.Contains(sb.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, sb.String())
		}
	}
}
