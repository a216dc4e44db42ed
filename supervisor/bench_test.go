package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/errgroup"

	"github.com/visorhq/visor/supervisor/restart"
)

const benchN = 1000

// sleepBinary is the workload of the benchmarks: a small system binary, so
// that 1000 copies stay cheap and both sides run the same thing.
func sleepBinary(b *testing.B) string {
	p, err := lookPath("sleep", "", DefaultPath)
	if err != nil {
		b.Skipf("no sleep binary: %v", err)
	}
	return p
}

// BenchmarkStart1000 starts 1000 sleepers through the supervisor and waits
// until all run; compare with BenchmarkBareExec1000 in the same run. After
// the last round it reports the supervisor's RSS and idle CPU with 1000
// processes supervised.
func BenchmarkStart1000(b *testing.B) {
	benchStart(b, start(b, Config{Logger: hclog.NewNullLogger()}))
}

// BenchmarkStart1000Cgroup is BenchmarkStart1000 with a cgroup per
// instance (the host's backend; skipped without one).
func BenchmarkStart1000Cgroup(b *testing.B) {
	h := start(b, Config{Logger: hclog.NewNullLogger(), Cgroups: "auto", CgroupParent: "visor-bench"})
	if h.CgroupMode() == "none" {
		b.Skip("no usable cgroup controller on this host")
	}
	benchStart(b, h)
}

func benchStart(b *testing.B, h *harness) {
	sleep := sleepBinary(b)
	ctx := context.Background()
	// Each round interleaves chunks of 100 supervised starts with untimed
	// chunks of 100 bare os/exec starts, so that the reported ratio holds
	// even when the load of the (shared) host drifts.
	const chunk = 100
	var sup, bare time.Duration
	for i := 0; i < b.N; i++ {
		var kills []func()
		for c := 0; c < benchN/chunk; c++ {
			t0 := time.Now()
			for j := range chunk {
				id := fmt.Sprintf("s%d-%d-%d", i, c, j)
				st, err := h.Start(ctx, Spec{ID: id, Command: []string{sleep, "3600"}})
				if err != nil || st.State != StateRunning {
					b.Fatalf("Start(%s) = %+v, %v", id, st, err)
				}
			}
			sup += time.Since(t0)
			b.StopTimer()
			d, kill := bareRound(b, sleep, chunk)
			bare += d
			kills = append(kills, kill)
			b.StartTimer()
		}
		b.StopTimer()
		if i == b.N-1 {
			rss, cpu := idleUsage(b)
			b.ReportMetric(rss, "rss-MB")
			b.ReportMetric(cpu, "idle-cpu-%")
		}
		for _, kill := range kills {
			kill()
		}
		stopAll(b, h.Supervisor)
		b.StartTimer()
	}
	b.ReportMetric(float64(sup)/float64(bare), "x-bare")
}

// BenchmarkBareExec1000 is the baseline: a bare os/exec loop starting the
// same 1000 sleepers.
func BenchmarkBareExec1000(b *testing.B) {
	sleep := sleepBinary(b)
	for b.Loop() {
		_, kill := bareRound(b, sleep, benchN)
		b.StopTimer()
		kill()
		b.StartTimer()
	}
}

// bareRound starts n sleepers with os/exec and returns how long that took
// and a func that kills and reaps them.
func bareRound(b *testing.B, sleep string, n int) (time.Duration, func()) {
	t0 := time.Now()
	cmds := make([]*exec.Cmd, 0, n)
	for range n {
		cmd := exec.Command(sleep, "3600")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	return time.Since(t0), func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
}

// stopAll stops and removes every instance, 32 at a time.
func stopAll(b *testing.B, s *Supervisor) {
	var g errgroup.Group
	g.SetLimit(32)
	for _, st := range s.List() {
		g.Go(func() error {
			if _, err := s.Stop(context.Background(), st.ID); err != nil {
				return err
			}
			return s.Remove(st.ID)
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
}

// idleUsage returns this process's RSS in MB and its CPU use in percent of
// one core over one idle second.
func idleUsage(b *testing.B) (rssMB, cpuPercent float64) {
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	t0 := time.Now()
	<-time.After(time.Second)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	used := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	cpuPercent = 100 * float64(used) / float64(time.Since(t0))
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			rssMB = kb / 1024
		}
	}
	return rssMB, cpuPercent
}

// runningHandler passes the pid of every new running state on.
type runningHandler struct{ ch chan Status }

func (h runningHandler) InstanceStateChanged(_ string, st Status) {
	if st.State == StateRunning {
		h.ch <- st
	}
}

// BenchmarkRestartLatency kills a supervised process and measures until its
// replacement runs, with zero backoff; it reports p50 and p99.
func BenchmarkRestartLatency(b *testing.B) {
	sleep := sleepBinary(b)
	hd := runningHandler{ch: make(chan Status, 16)}
	h := start(b, Config{Handler: hd, Logger: hclog.NewNullLogger()})
	ctx := context.Background()
	st, err := h.Start(ctx, Spec{ID: "crash", Command: []string{sleep, "3600"}, Restart: restart.Policy{NoBackoff: true}})
	if err != nil {
		b.Fatal(err)
	}
	<-hd.ch
	pid := st.PID
	var mu sync.Mutex
	var samples []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		next := <-hd.ch
		mu.Lock()
		samples = append(samples, time.Since(t0))
		mu.Unlock()
		pid = next.PID
	}
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(samples[len(samples)/2]), "p50-ms")
	b.ReportMetric(ms(samples[len(samples)*99/100]), "p99-ms")
}
