package fault

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/netnstest"
	"github.com/visorhq/visor/internal/testtime"
)

// holdEnv, set to "1", makes TestFaultInjection bring up a small fleet
// (three agents, three etcd members, a few workloads), print upMarker and
// a JSON harnessUp on stdout, and wait to be killed: the subject of
// TestKilledHarnessLeavesNothing.
const holdEnv = "VISOR_FAULT_HOLD"

// upMarker starts the line on which the held harness reports itself.
const upMarker = "FAULT-HARNESS-UP "

// harnessUp is what the held harness has running.
type harnessUp struct {
	Tag        string              `json:"tag"`
	Namespaces []string            `json:"namespaces"`
	Links      map[string][]string `json:"links"` // namespace -> link names
	Agents     []int               `json:"agents"`
	Members    []int               `json:"members"`
	Workloads  []int               `json:"workloads"`
}

// holdForKill brings the fleet up small, reports it and waits until the
// suite's deadline (the parent kills it long before).
func holdForKill(t *testing.T, f *fleet) {
	s := &suite{f: f, want: map[string]int{"big": 4, "web": 4}}
	s.setUp(t)
	up := harnessUp{Tag: f.net.tag, Namespaces: f.net.namespaces(), Links: map[string][]string{}}
	for _, ns := range up.Namespaces {
		out, err := netnstest.IP("-n", ns, "-o", "link", "show")
		if err != nil {
			t.Fatal(err)
		}
		up.Links[ns] = linkNames(out)
	}
	f.mu.Lock()
	for _, p := range f.agents {
		up.Agents = append(up.Agents, p.cmd.Process.Pid)
	}
	for _, p := range f.members {
		up.Members = append(up.Members, p.cmd.Process.Pid)
	}
	f.mu.Unlock()
	for _, pids := range f.workloads(f.ctx) {
		up.Workloads = append(up.Workloads, pids...)
	}
	b, err := json.Marshal(up)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%s%s\n", upMarker, b)
	<-f.ctx.Done()
}

// linkNames returns the link names of `ip -o link show` output.
func linkNames(out string) []string {
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// rootState returns rootNetState or fails the test.
func rootState(t testing.TB) string {
	t.Helper()
	st, err := rootNetState()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestKilledHarnessLeavesNothing runs the suite's harness (this test binary,
// TestFaultInjection in hold mode) as a subprocess, waits until it has
// agents, etcd members, workloads, namespaces and links up, kills it with
// SIGKILL, and asserts that within 10 s (scaled) none of its processes and
// namespaces (with the links in them) is left and the root namespace is as
// before. Should this test fail half-way, its cleanup kills the harness
// and removes what it left, as the next suite run would.
func TestKilledHarnessLeavesNothing(t *testing.T) {
	netnstest.Require(t, "fault-injection suite")
	rootBefore := rootState(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestFaultInjection$", "-test.v", "-test.count=1",
		"-test.timeout="+testtime.Scaled(5*time.Minute).String())
	cmd.Env = append(os.Environ(), holdEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The reader owns stdout until EOF, which comes when the harness dies;
	// only then may cmd.Wait run.
	var (
		mu     sync.Mutex // guards output
		output []string
		upCh   = make(chan string, 1)
		read   = make(chan struct{})
		waited bool
	)
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, upMarker); ok {
				upCh <- rest
			}
			mu.Lock()
			output = append(output, line)
			mu.Unlock()
		}
	}()
	transcript := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(output, "\n") + "\n" + stderr.String()
	}
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			<-read
			_ = cmd.Wait()
		}
		removeLeftovers(t) // the harness is dead: whatever it left is a leftover
	})

	var up harnessUp
	tm := time.NewTimer(testtime.Scaled(4 * time.Minute))
	defer tm.Stop()
	select {
	case line := <-upCh:
		if err := json.Unmarshal([]byte(line), &up); err != nil {
			t.Fatalf("harness report %q: %v", line, err)
		}
	case <-read:
		t.Fatalf("harness ended before it was up:\n%s", transcript())
	case <-tm.C:
		t.Fatalf("harness not up within %s:\n%s", testtime.Scaled(4*time.Minute), transcript())
	}

	// What is up, seen from here, before the kill.
	switch {
	case len(up.Agents) != 3, len(up.Members) != 3, len(up.Workloads) == 0, len(up.Namespaces) != 4:
		t.Fatalf("harness is not fully up: %+v", up)
	}
	if got := up.Links[up.Tag+"-hub"]; !contains(got, netnstest.Bridge) || len(got) != 5 { // lo, br0, 3 veths
		t.Fatalf("hub links %v, want lo, %s and three veths", got, netnstest.Bridge)
	}
	for _, ns := range up.Namespaces[1:] {
		if got := up.Links[ns]; !contains(got, "eth0") {
			t.Fatalf("%s links %v, want eth0 (a veth's end)", ns, got)
		}
	}
	starts := map[int]string{} // pid -> start time: a pid reused later is not ours
	for _, pids := range [][]int{up.Agents, up.Members, up.Workloads} {
		for _, pid := range pids {
			st, ok := netnstest.StartTime(pid)
			if !ok {
				t.Fatalf("process %d of the harness is not running before the kill", pid)
			}
			starts[pid] = st
		}
	}
	inodes := map[uint64]bool{}
	for _, ns := range up.Namespaces {
		ino, err := netnstest.Inode(ns)
		if err != nil {
			t.Fatalf("namespace %s of the harness: %v", ns, err)
		}
		inodes[ino] = true
	}
	if st := rootState(t); st != rootBefore {
		t.Errorf("the root network namespace changed while the harness is up:\nbefore:\n%s\nnow:\n%s", rootBefore, st)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-read // the harness's stdout closes as it dies
	waitErr := cmd.Wait()
	waited = true
	var ee *exec.ExitError
	if !errors.As(waitErr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("harness ended with %v, want killed by SIGKILL:\n%s", waitErr, transcript())
	}

	// Within 10 s (scaled) of the kill, nothing of it is left.
	limit := testtime.Scaled(10 * time.Second)
	left := func() []string {
		var l []string
		for pid, st := range starts {
			if now, ok := netnstest.StartTime(pid); ok && now == st {
				l = append(l, fmt.Sprintf("process %d (%s)", pid, procState(pid)))
			}
		}
		for pid := range netnstest.PidsIn(context.Background(), inodes) {
			l = append(l, fmt.Sprintf("process %d in a harness namespace", pid))
		}
		for _, ns := range netnstest.Namespaces(up.Tag + "-") {
			l = append(l, "namespace "+ns)
		}
		for _, ref := range nsReferences(inodes) {
			l = append(l, ref)
		}
		if st, err := rootNetState(); err != nil || st != rootBefore {
			l = append(l, fmt.Sprintf("root namespace changed (%v):\n%s", err, st))
		}
		sort.Strings(l)
		return l
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for {
		l := left()
		if len(l) == 0 {
			t.Logf("nothing of the killed harness left %s after the kill (%d processes, namespaces %v)",
				time.Since(killed).Round(time.Millisecond), len(starts), up.Namespaces)
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("%s after kill -9 of the harness, still left: %s\nharness output:\n%s", limit, strings.Join(l, "; "), transcript())
		case <-tk.C:
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// nsReferences lists open file descriptors, anywhere on the machine, that
// refer to one of the network namespaces inodes: with no process in it, no
// name in /run/netns and no descriptor, a namespace is freed by the kernel
// together with its links.
func nsReferences(inodes map[uint64]bool) []string {
	var refs []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + e.Name() + "/fd")
		for _, fd := range fds {
			l, err := os.Readlink("/proc/" + e.Name() + "/fd/" + fd.Name())
			if err != nil {
				continue
			}
			s, ok := strings.CutPrefix(l, "net:[")
			if !ok {
				continue
			}
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil && inodes[ino] {
				refs = append(refs, fmt.Sprintf("process %s holds namespace %d open (fd %s)", e.Name(), ino, fd.Name()))
			}
		}
	}
	return refs
}
