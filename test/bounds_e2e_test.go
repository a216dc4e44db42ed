package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// procStatusKB returns a field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
func procStatusKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			must(t, err)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// goroutines returns the agent's go_goroutines metric.
func goroutines(t *testing.T, base string) int {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	must(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.Atoi(v)
			must(t, err)
			return n
		}
	}
	t.Fatal("no go_goroutines in /metrics")
	return 0
}

// logsRSSBound is how much the agent's peak RSS may grow over its baseline
// while serving logsRequests requests of logsLines lines at once. Before
// logs were streamed (issue 14 row 4) the same run grew it by about 1 GB;
// the streamed requests need a few hundred KiB each.
const (
	logsRequests = 20
	logsLines    = 100_000
	logsRSSBound = 200 << 10 // KiB
)

// TestLogsMemoryBounded: 20 concurrent requests for the last 100 000 lines
// (500 bytes each, 50 MB) of a real instance's log keep the agent's RSS
// within logsRSSBound of its baseline, every request gets all its lines,
// and followers whose clients leave are gone (goroutines back to the
// baseline).
func TestLogsMemoryBounded(t *testing.T) {
	c := newCluster(t)
	ctx := c.ctx
	must(t, err2(c.reg.RegisterApp(ctx, registry.App{Name: "chatty"})))
	must(t, c.reg.SetEnv(ctx, "chatty", map[string]string{"VISOR_E2E": c.runID, proctest.EnvVar: "1"}))
	must(t, err2(c.reg.RegisterRevision(ctx, registry.Revision{App: "chatty", Name: "v1", Dir: os.TempDir()})))
	must(t, err2(c.reg.SetProcType(ctx, registry.ProcType{
		App: "chatty", Name: "web",
		Command:     selfCommand("print-lines", strconv.Itoa(logsLines), "500") + " && exec " + selfCommand("sleep"),
		StopTimeout: registry.Duration(3 * time.Second),
	})))
	port := freePort(t)
	a := c.startAgent("host-a", "-http-addr", "127.0.0.1:"+strconv.Itoa(port), "-insecure-http", "-log-streams-per-client", "32")
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	must(t, err2(c.reg.Scale(ctx, "chatty", "v1", "web", 1)))
	var id string
	for k := range c.waitSettled("chatty", 1, 60*time.Second) {
		id = k
	}
	logsURL := base + "/v1/instances/" + id + "/logs"
	last := fmt.Sprintf("line %05d", logsLines-1)
	proctest.WaitFor(t, 60*time.Second, "the whole log written", func() bool {
		resp, err := http.Get(logsURL + "?tail=1")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.HasPrefix(string(b), last)
	})

	pid := a.cmd.Process.Pid
	baseRSS := procStatusKB(t, pid, "VmRSS")
	baseG := goroutines(t, base)
	var wg sync.WaitGroup
	errs := make(chan error, logsRequests)
	for range logsRequests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(logsURL + "?tail=" + strconv.Itoa(logsLines))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
				return
			}
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 4096), 1<<20)
			n := 0
			for sc.Scan() {
				n++
			}
			if err := sc.Err(); err != nil || n != logsLines {
				errs <- fmt.Errorf("got %d lines, want %d (%v)", n, logsLines, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("logs request: %v", err)
	}
	peak := procStatusKB(t, pid, "VmHWM")
	t.Logf("agent RSS: baseline %d KiB, peak %d KiB during %d requests of %d lines (+%d KiB, bound +%d KiB)",
		baseRSS, peak, logsRequests, logsLines, peak-baseRSS, logsRSSBound)
	if peak-baseRSS > logsRSSBound {
		t.Fatalf("agent peak RSS %d KiB is %d KiB over its baseline %d KiB; bound %d KiB", peak, peak-baseRSS, baseRSS, logsRSSBound)
	}

	// Followers whose clients leave end: the agent's goroutines come back.
	var cancels []context.CancelFunc
	for range logsRequests {
		rctx, cancel := context.WithCancel(ctx)
		cancels = append(cancels, cancel)
		req, err := http.NewRequestWithContext(rctx, "GET", logsURL+"?tail=10&follow=1", nil)
		must(t, err)
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatalf("followed stream: %v", err)
		}
		defer resp.Body.Close()
	}
	during := goroutines(t, base)
	for _, cancel := range cancels {
		cancel()
	}
	http.DefaultClient.CloseIdleConnections()
	proctest.WaitFor(t, 30*time.Second, "the followers' goroutines gone", func() bool {
		return goroutines(t, base) <= baseG+2
	})
	t.Logf("agent goroutines: %d before, %d with %d followers, back to <= %d", baseG, during, logsRequests, baseG+2)
}
