package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

func TestProcCommands(t *testing.T) {
	h := newHarness(t)
	h.ok("app", "create", "web")

	var p map[string]any
	h.okJSON(&p, "proc", "set", "web", "web",
		"--command", "./bin/web --port $PORT",
		"--restart", "on-failure", "--max-restarts", "5",
		"--stop-signal", "SIGINT", "--stop-timeout", "20s", "--min-uptime", "3s",
		"--health-type", "http", "--health-path", "/healthz", "--health-period", "5s",
		"--health-timeout", "2s", "--health-threshold", "3",
		"--memory", "256M", "--cpu", "0.5", "--pids", "64",
		"--user", "nobody", "--group", "nogroup",
		"--env", "A=1", "--env", "B=x=y")
	checkFields(t, "proc set -o json", p, "app", "name", "command", "env", "restart", "stop_signal",
		"stop_timeout", "min_uptime", "health", "limits", "user", "group", "update")
	checkFields(t, "proc restart", p["restart"].(map[string]any), "policy", "initial_delay", "max_delay", "reset_after", "max_restarts")
	checkFields(t, "proc health", p["health"].(map[string]any), "type", "command", "path", "period", "timeout", "failure_threshold")
	checkFields(t, "proc limits", p["limits"].(map[string]any), "memory_bytes", "cpu_millis", "pids")

	got, err := h.registry().ProcType(testContext(t), "web", "web")
	if err != nil {
		t.Fatalf("proc type: %v", err)
	}
	if got.Command != "./bin/web --port $PORT" || got.Restart.Policy != "on-failure" || got.Restart.MaxRestarts != 5 ||
		got.StopSignal != "INT" || got.StopTimeout.String() != "20s" || got.MinUptime.String() != "3s" ||
		got.Health == nil || got.Health.Type != "http" || got.Health.Path != "/healthz" || got.Health.FailureThreshold != 3 ||
		got.Limits.MemoryBytes != 256<<20 || got.Limits.CPUMillis != 500 || got.Limits.Pids != 64 ||
		got.User != "nobody" || got.Group != "nogroup" || got.Env["A"] != "1" || got.Env["B"] != "x=y" {
		t.Errorf("stored proc type: %+v health %+v", got, got.Health)
	}

	// A second set changes only the flags given.
	h.ok("proc", "set", "web", "web", "--memory", "1G", "--env", "C=3")
	got, err = h.registry().ProcType(testContext(t), "web", "web")
	if err != nil {
		t.Fatalf("proc type: %v", err)
	}
	if got.Limits.MemoryBytes != 1<<30 || got.Limits.CPUMillis != 500 || got.Command != "./bin/web --port $PORT" ||
		got.Env["A"] != "1" || got.Env["C"] != "3" || got.Health == nil {
		t.Errorf("after partial set: %+v", got)
	}
	h.ok("proc", "set", "web", "web", "--health-type", "none")
	// A group without a user is refused, also when the user is removed.
	h.fails(2, []string{`--group "nogroup" without a user`}, "proc", "set", "web", "web", "--user", "")
	h.fails(2, []string{`--group "staff" without a user`}, "proc", "set", "web", "grouponly", "--group", "staff")
	h.ok("proc", "set", "web", "worker", "--health-type", "exec", "--health-cmd", "test -f /tmp/ok", "--cpu", "250m")

	out := h.ok("proc", "list", "web")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "web") || !strings.Contains(lines[1], "mem=1G cpu=500m pids=64") ||
		!strings.Contains(lines[1], "INT/20s") || !strings.HasPrefix(lines[2], "worker") || !strings.Contains(lines[2], "exec") {
		t.Errorf("proc list: got\n%s", out)
	}
	var list []map[string]any
	h.okJSON(&list, "proc", "list", "web")
	if len(list) != 2 || list[0]["health"] != nil {
		t.Errorf("proc list -o json: %v", list)
	}

	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--restart", "sometimes"}, []string{"--restart", `"sometimes"`}},
		{[]string{"--memory", "lots"}, []string{"--memory", `"lots"`}},
		{[]string{"--memory", "-5M"}, []string{"--memory", `"-5M"`}},
		{[]string{"--cpu", "half"}, []string{"--cpu", `"half"`}},
		{[]string{"--cpu", "0.0004"}, []string{"--cpu", `"0.0004"`, "minimum of 10m"}},
		{[]string{"--cpu", "5"}, []string{"--cpu", `"5"`, "minimum of 10m"}},
		{[]string{"--cpu", "9m"}, []string{"--cpu", `"9m"`, "minimum of 10m"}},
		{[]string{"--memory", "0.5"}, []string{"--memory", `"0.5"`, "less than one byte"}},
		{[]string{"--stop-signal", "FOO"}, []string{"--stop-signal", `"FOO"`}},
		{[]string{"--stop-signal", "STOP"}, []string{"--stop-signal", `"STOP"`, "job-control"}},
		{[]string{"--stop-signal", "SIGTSTP"}, []string{"--stop-signal", `"SIGTSTP"`, "job-control"}},
		{[]string{"--stop-signal", "cont"}, []string{"--stop-signal", `"cont"`, "job-control"}},
		{[]string{"--stop-signal", "TTIN"}, []string{"--stop-signal", `"TTIN"`, "job-control"}},
		{[]string{"--stop-signal", "ttou"}, []string{"--stop-signal", `"ttou"`, "job-control"}},
		{[]string{"--health-type", "smoke"}, []string{"--health-type", `"smoke"`}},
		{[]string{"--health-path", "/x"}, []string{"--health-type"}},
		{[]string{"--health-type", "exec"}, []string{"--health-cmd"}},
		{[]string{"--health-type", "http", "--health-path", "x"}, []string{"--health-path", `"x"`}},
		{[]string{"--health-type", "tcp", "--health-threshold", "0"}, []string{"--health-threshold"}},
		{[]string{"--pids", "-1"}, []string{"--pids"}},
		{[]string{"--stop-timeout", "-1s"}, []string{"--stop-timeout"}},
		{[]string{"--env", "A=1", "--env", "A=2"}, []string{"A given twice"}},
	} {
		h.fails(2, tc.want, append([]string{"proc", "set", "web", "api"}, tc.args...)...)
	}
	h.fails(1, []string{"nope", "not found"}, "proc", "set", "nope", "web")
	h.fails(2, []string{"invalid", "Web"}, "proc", "set", "web", "Web")
	h.fails(2, []string{"invalid", "1BAD"}, "proc", "set", "web", "api", "--env", "1BAD=x")
	// Nothing of a rejected set is written.
	h.fails(1, []string{"api", "not found"}, "proc", "delete", "web", "api")

	h.ok("proc", "delete", "web", "worker")
	list = nil
	h.okJSON(&list, "proc", "list", "web")
	if len(list) != 1 {
		t.Errorf("after delete: %v", list)
	}
}

func TestParseMemoryAndCPU(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"1024", 1024}, {"512K", 512 << 10}, {"256M", 256 << 20}, {"256Mi", 256 << 20},
		{"256mb", 256 << 20}, {"1G", 1 << 30}, {"1.5G", 3 << 29}, {"2T", 2 << 40},
	} {
		got, err := parseMemory(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseMemory(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	// A non-zero size that truncates to 0 bytes would mean unlimited.
	for _, bad := range []string{"", "M", "x", "-1", "1X", "NaN", "1e30G", "0.5", "0.9B", "1e-30G"} {
		if _, err := parseMemory(bad); err == nil {
			t.Errorf("parseMemory(%q): no error", bad)
		}
	}
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"500", 500}, {"500m", 500}, {"0.5", 500}, {"2.0", 2000}, {"0.25", 250}, {"0", 0},
		{"0m", 0}, {"0.0", 0}, {"10", 10}, {"10m", 10}, {"0.01", 10}, {"0.0096", 10},
	} {
		got, err := parseCPU(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("parseCPU(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	// Non-zero limits below the supervisor's minimum of 10 millicores,
	// including ones that round to 0 (which would mean unlimited).
	for _, bad := range []string{"", "half", "-1", "-0.5", "1.2.3", "xm", "5", "9m", "1", "0.009", "0.0004", "0.0094"} {
		if _, err := parseCPU(bad); err == nil {
			t.Errorf("parseCPU(%q): no error", bad)
		}
	}
}

// TestProcSetFlagsCheckedBeforeDial checks that proc set reports a bad flag
// at once when etcd is down, rather than a connect error after --timeout.
func TestProcSetFlagsCheckedBeforeDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, flags := range [][]string{
		{"--memory", "abc"},
		{"--cpu", "5"},
		{"--stop-timeout", "-1s"},
		{"--health-threshold", "0"},
		{"--command", "x", "--memory", "0.5"},
	} {
		args := append([]string{"--endpoints", closed, "--timeout", "10m", "proc", "set", "web", "web"}, flags...)
		start := time.Now()
		res := runCLI(args...)
		if d := time.Since(start); d > testtime.Scaled(30*time.Second) { // far below --timeout
			t.Errorf("visor %s: took %s; the flag error must come before dialling", strings.Join(args, " "), d)
		}
		checkFailure(t, res, 2, []string{flags[len(flags)-2]}, args)
		if strings.Contains(res.stderr, "connect") || strings.Contains(res.stderr, closed) {
			t.Errorf("visor %s: %q is a connect error, want the flag's", strings.Join(args, " "), res.stderr)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]string{"TERM": "TERM", "sigint": "INT", "SIGQUIT": "QUIT", " hup ": "HUP", "KILL": "KILL", "usr2": "USR2", "xcpu": "XCPU", "SIGIOT": "IOT", "15": "15", "64": "64"} {
		if got, err := parseSignal("stop-signal", in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "FOO", "STOP", "SIGSTOP", "TSTP", "CONT", "SIGCONT", "TTIN", "TTOU", "0", "65", "015", "-1"} {
		if got, err := parseSignal("stop-signal", bad); err == nil {
			t.Errorf("parseSignal(%q) = %q, want an error", bad, got)
		}
	}
}
