package e2etest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"testing"

	"github.com/visorhq/visor/internal/proctest"
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// VisorBinary builds cmd/visor once per test binary and returns its path.
// Call Cleanup from TestMain to remove it.
func VisorBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "visor-e2e-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "visor")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/visor")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/visor: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Cleanup removes the binary VisorBinary built, if any.
func Cleanup() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// Workloads scans /proc for the live processes of run runID: instance id ->
// pids (sorted). Only processes whose environment carries VISOR_E2E=runID
// and a VISOR_INSTANCE count; zombies do not.
func Workloads(runID string) map[string][]int {
	out := map[string][]int{}
	ents, _ := os.ReadDir("/proc")
	tag := []byte("VISOR_E2E=" + runID + "\x00")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(env, tag) || !proctest.Alive(pid) {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if id, ok := bytes.CutPrefix(kv, []byte("VISOR_INSTANCE=")); ok {
				out[string(id)] = append(out[string(id)], pid)
			}
		}
	}
	for _, pids := range out {
		sort.Ints(pids)
	}
	return out
}
