package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/visorhq/visor/supervisor"
)

// TestInstanceUsageInListAndMetrics (issue 17, items 1 and 6): the list
// endpoint carries each live instance's RSS and CPU and its phase, so a
// SIGSTOPped process shows "stopped" (it showed running); /metrics exports
// per-instance CPU and memory.
func TestInstanceUsageInListAndMetrics(t *testing.T) {
	f := newFixture(t)
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true })
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	var id string
	var pid int
	for k, in := range f.waitRunning(t, "demo", 1) {
		id, pid = k, in.PID
	}
	base := "http://" + a.HTTPAddr()
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(base + path)
		must(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		must(t, err)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	list := func() supervisor.Status {
		t.Helper()
		var sts []supervisor.Status
		must(t, json.Unmarshal([]byte(get("/v1/instances")), &sts))
		for _, st := range sts {
			if st.ID == id {
				return st
			}
		}
		t.Fatalf("instance %s not in the list", id)
		return supervisor.Status{}
	}
	if st := list(); st.RSSBytes == 0 || st.Phase != supervisor.PhaseRunning {
		t.Fatalf("listed %+v; want RSS and phase running", st)
	}
	must(t, syscall.Kill(pid, syscall.SIGSTOP))
	waitProcState(t, pid, true)
	if st := list(); st.Phase != supervisor.PhaseStopped {
		t.Fatalf("SIGSTOPped instance listed in phase %q, want stopped", st.Phase)
	}
	must(t, syscall.Kill(pid, syscall.SIGCONT))

	metrics := get("/metrics")
	re := regexp.MustCompile(`(?m)^visor_agent_instance_rss_bytes\{[^}]*instance="` + regexp.QuoteMeta(id) + `"[^}]*\} (\S+)$`)
	m := re.FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no visor_agent_instance_rss_bytes for %s in /metrics:\n%s", id, grepLines(metrics, "visor_agent_instance"))
	}
	if v, err := strconv.ParseFloat(m[1], 64); err != nil || v <= 0 {
		t.Fatalf("rss of %s = %q", id, m[1])
	}
	if !regexp.MustCompile(`(?m)^visor_agent_instance_cpu_percent\{app="demo",instance="` + regexp.QuoteMeta(id) + `",proc="web",rev="v1"\} `).MatchString(metrics) {
		t.Fatalf("no visor_agent_instance_cpu_percent for %s:\n%s", id, grepLines(metrics, "visor_agent_instance"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
