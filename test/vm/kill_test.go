package vm

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/netnstest"
	"github.com/visorhq/visor/internal/testtime"
)

// holdEnv, set to "1", makes TestVMHold bring up the suite's world small
// (etcd, one restored guest), print holdMarker and a JSON heldUp on stdout,
// and wait to be killed: the subject of TestKilledHarnessLeavesNothing.
const holdEnv = "VISOR_VM_HOLD"

const holdMarker = "VM-HARNESS-UP "

// heldUp is what the held harness has running.
type heldUp struct {
	Tag   string `json:"tag"`
	NS    string `json:"ns"`
	Dir   string `json:"dir"`
	Procs []int  `json:"procs"` // every process in the namespace (qemu, etcd)
}

// TestVMHold is the held harness; it only runs with holdEnv set.
func TestVMHold(t *testing.T) {
	if os.Getenv(holdEnv) != "1" {
		t.Skip("runs only as the subject of TestKilledHarnessLeavesNothing")
	}
	f := newFleet(t, false, 1)
	ino, err := nsInode(f.net.ns)
	if err != nil {
		t.Fatal(err)
	}
	up := heldUp{Tag: f.net.tag, NS: f.net.ns, Dir: f.dir, Procs: pidsIn(ino)}
	b, _ := json.Marshal(up)
	fmt.Printf("%s%s\n", holdMarker, b)
	<-f.ctx.Done()
}

// TestKilledHarnessLeavesNothing runs the held harness (this test binary,
// TestVMHold) as a subprocess, waits until it has etcd and a guest up,
// kills it with SIGKILL, and asserts that within 60 s (scaled) none of its
// processes, neither its namespace nor its directory of disks is left.
func TestKilledHarnessLeavesNothing(t *testing.T) {
	requireVM(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestVMHold$", "-test.v", "-test.count=1",
		"-test.timeout="+testtime.Scaled(15*time.Minute).String())
	cmd.Env = append(os.Environ(), holdEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		output []string
		upCh   = make(chan string, 1)
		read   = make(chan struct{})
	)
	go func() { // owns stdout until EOF (the harness's death)
		defer close(read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), holdMarker); ok {
				upCh <- rest
			}
			mu.Lock()
			output = append(output, sc.Text())
			mu.Unlock()
		}
	}()
	transcript := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(output, "\n") + "\n" + stderr.String()
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			<-read
			_ = cmd.Wait()
		}
		removeLeftovers(t)
	})
	var up heldUp
	limit := testtime.Scaled(12 * time.Minute)
	tm := time.NewTimer(limit)
	defer tm.Stop()
	select {
	case line := <-upCh:
		if err := json.Unmarshal([]byte(line), &up); err != nil {
			t.Fatal(err)
		}
	case <-read:
		t.Fatalf("harness ended before it was up:\n%s", transcript())
	case <-tm.C:
		t.Fatalf("harness not up within %s:\n%s", limit, transcript())
	}
	if len(up.Procs) < 4 { // 3 etcd members and qemu
		t.Fatalf("held harness runs %v, want 3 etcd members and a qemu", up.Procs)
	}
	starts := map[int]string{}
	for _, pid := range up.Procs {
		if st, ok := netnstest.StartTime(pid); ok {
			starts[pid] = st
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-read
	_ = cmd.Wait()
	waited = true
	left := func() []string {
		var l []string
		for pid, st := range starts {
			if now, ok := netnstest.StartTime(pid); ok && now == st {
				l = append(l, fmt.Sprintf("process %d", pid))
			}
		}
		if _, err := os.Stat(filepath.Join(netnsDir, up.NS)); err == nil {
			l = append(l, "namespace "+up.NS)
		}
		if _, err := os.Stat(up.Dir); err == nil {
			l = append(l, "directory "+up.Dir)
		}
		sort.Strings(l)
		return l
	}
	deadline := time.NewTimer(testtime.Scaled(60 * time.Second))
	defer deadline.Stop()
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	for {
		l := left()
		if len(l) == 0 {
			t.Logf("nothing of the killed harness left %s after the kill (%d processes, %s, %s)",
				time.Since(killed).Round(10*time.Millisecond), len(starts), up.NS, up.Dir)
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("after kill -9 of the harness, still left: %s\n%s", strings.Join(l, "; "), transcript())
		case <-tk.C:
		}
	}
}
