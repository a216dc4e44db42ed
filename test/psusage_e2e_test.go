package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/proctest"
)

// TestPSShowsUsageAndStoppedPhase (issue 17, item 1): `visor ps` shows
// each running instance's CPU% and RSS, asked from its agent, and a
// SIGSTOPped process as "stopped" (it showed running).
func TestPSShowsUsageAndStoppedPhase(t *testing.T) {
	bin := e2etest.VisorBinary(t)
	c := &cluster{t: t, runID: fmt.Sprint(time.Now().UnixNano())}
	t.Cleanup(c.killWorkloads)
	d := startDev(t, bin, t.TempDir())
	d.runDemo(t, c.runID, 1)
	type row struct {
		ID         string   `json:"id"`
		State      string   `json:"state"`
		PID        int      `json:"pid"`
		CPUPercent *float64 `json:"cpu_percent"`
		RSSBytes   *uint64  `json:"rss_bytes"`
		Phase      string   `json:"phase"`
	}
	ps := func() row {
		t.Helper()
		out, err := d.visor("ps", "demo", "-o", "json")
		if err != nil {
			t.Fatalf("ps -o json: %v\n%s", err, out)
		}
		var rows []row
		if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
			t.Fatalf("ps -o json: %v\n%s", err, out)
		}
		return rows[0]
	}
	r := ps()
	if r.State != "running" || r.CPUPercent == nil || r.RSSBytes == nil || *r.RSSBytes == 0 || r.Phase != "running" {
		t.Fatalf("ps of a running instance: %+v; want CPU, RSS and phase running", r)
	}
	out, err := d.visor("ps", "demo")
	if err != nil || !strings.Contains(out, "CPU%") || !strings.Contains(out, "RSS") {
		t.Fatalf("ps table: %v\n%s", err, out)
	}
	must(t, syscall.Kill(r.PID, syscall.SIGSTOP))
	proctest.WaitFor(t, 30*time.Second, "ps to show the SIGSTOPped instance stopped", func() bool {
		r := ps()
		return r.State == "stopped" && r.Phase == "stopped"
	})
	out, err = d.visor("ps", "demo")
	if err != nil || !strings.Contains(out, "stopped") {
		t.Fatalf("ps table of a stopped instance: %v\n%s", err, out)
	}
	must(t, syscall.Kill(r.PID, syscall.SIGCONT))
	d.interrupt(t)
}
