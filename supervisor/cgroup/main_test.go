package cgroup

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

// helperEnv makes the test binary act as a workload instead of running tests.
const helperEnv = "VISOR_CGROUP_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	goleak.VerifyTestMain(m)
}

// runHelper implements the workloads:
//
//	sleep      sleeps for an hour
//	spawn      starts a "sleep" grandchild, prints its pid, sleeps
//	alloc:N    allocates and touches N MiB, then sleeps
//	probe:DIR  prints the backend Probe picks under DIR and exits
func runHelper(mode string) int {
	switch {
	case strings.HasPrefix(mode, "probe:"):
		m, err := Probe(strings.TrimPrefix(mode, "probe:"), "visor", nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(m.Mode(), strings.Join(m.Controllers(), ","))
		return 0
	case mode == "sleep":
	case mode == "spawn":
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), helperEnv+"=sleep")
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(cmd.Process.Pid)
	case strings.HasPrefix(mode, "alloc:"):
		var mib int
		fmt.Sscanf(mode, "alloc:%d", &mib)
		var keep [][]byte
		for range mib {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			keep = append(keep, b)
		}
		fmt.Println("allocated", len(keep))
	default:
		fmt.Fprintln(os.Stderr, "unknown helper", mode)
		return 2
	}
	time.Sleep(time.Hour) // the workload idles until killed; not a poll
	return 0
}

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: tWriter{t}})
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
