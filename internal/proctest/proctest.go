package proctest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// EnvVar, set to "1", makes Main run the workload named by os.Args[1].
const EnvVar = "VISOR_PROCTEST"

// Main runs the workload and exits when the process was started through
// Command and Env; otherwise it returns at once. Call it first in TestMain.
func Main() {
	if os.Getenv(EnvVar) != "1" || len(os.Args) < 2 {
		return
	}
	os.Exit(run(os.Args[1], os.Args[2:]))
}

// Binary returns the absolute path of the running test binary.
func Binary() string {
	p, err := os.Executable()
	if err != nil {
		p = os.Args[0]
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return p
}

// Command returns the argv that runs workload with args.
func Command(workload string, args ...string) []string {
	return append([]string{Binary(), workload}, args...)
}

// Env returns the environment a workload needs (EnvVar and PATH).
func Env() []string {
	return []string{EnvVar + "=1", "PATH=" + os.Getenv("PATH")}
}

// Exec returns an *exec.Cmd running the workload, for bare os/exec comparisons.
func Exec(workload string, args ...string) *exec.Cmd {
	argv := Command(workload, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = Env()
	return cmd
}

func run(workload string, args []string) int {
	if w := workloads[workload]; w != nil {
		return w(wargs(args))
	}
	fmt.Fprintf(os.Stderr, "proctest: unknown workload %q\n", workload)
	return 2
}

// workloads are the helper process's behaviours, by name; each gets its
// arguments and returns the exit code (many never return).
var workloads = map[string]func(a wargs) int{
	"sleep":            sleepWorkload,
	"exit":             func(a wargs) int { return a.num(0, "0") }, // exit N: exit at once with code N
	"tick":             tickWorkload,
	"crash-after":      crashAfterWorkload,
	"ignore-sigterm":   ignoreSigtermWorkload,
	"spawn-grandchild": func(a wargs) int { return spawnWorkload(a, false) },
	"spawn-escapee":    func(a wargs) int { return spawnWorkload(a, true) },
	"print-lines":      printLinesWorkload,
	"alloc":            allocWorkload,
	"listen-port":      listenPortWorkload,
	"crash-seq":        crashSeqWorkload,
}

// wargs are a workload's arguments; a malformed one exits 2.
type wargs []string

// arg is the i-th argument, or def.
func (a wargs) arg(i int, def string) string {
	if i < len(a) {
		return a[i]
	}
	return def
}

// dur is the i-th argument (or def) as a duration.
func (a wargs) dur(i int, def string) time.Duration { return parseDur(a.arg(i, def)) }

// num is the i-th argument (or def) as an integer.
func (a wargs) num(i int, def string) int {
	s := a.arg(i, def)
	n, err := strconv.Atoi(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proctest: bad number %q\n", s)
		os.Exit(2)
	}
	return n
}

func parseDur(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "proctest: bad duration %q\n", s)
		os.Exit(2)
	}
	return d
}

// sleep [D]: sleep D (default: forever), then exit 0.
func sleepWorkload(a wargs) int {
	if a.arg(0, "") != "" {
		time.Sleep(a.dur(0, ""))
		return 0
	}
	select {}
}

// tick D: print a numbered line to stdout every D, forever.
func tickWorkload(a wargs) int {
	t := time.NewTicker(a.dur(0, "10ms"))
	for i := 0; ; i++ {
		fmt.Fprintf(os.Stdout, "tick %d\n", i)
		<-t.C
	}
}

// crash-after D: run D, then exit 1.
func crashAfterWorkload(a wargs) int {
	time.Sleep(a.dur(0, "0s"))
	fmt.Fprintln(os.Stderr, "crashing")
	return 1
}

// ignore-sigterm [FILE]: ignore SIGTERM, write FILE when ready, run forever.
func ignoreSigtermWorkload(a wargs) int {
	signal.Ignore(syscall.SIGTERM)
	ready(a.arg(0, ""), strconv.Itoa(os.Getpid()))
	select {}
}

// spawn-grandchild FILE: start an ignore-sigterm grandchild in our process
// group, write its pid to FILE, run forever. spawn-escapee FILE: the same
// with the grandchild in a new session (out of our process group: only a
// cgroup can catch it).
func spawnWorkload(a wargs, escape bool) int {
	cmd := Exec("ignore-sigterm")
	if escape {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ready(a.arg(0, ""), strconv.Itoa(cmd.Process.Pid))
	select {}
}

// print-lines N [WIDTH]: write N numbered lines of WIDTH bytes to stdout
// and one line to stderr, then exit 0.
func printLinesWorkload(a wargs) int {
	n, width := a.num(0, "1"), a.num(1, "0")
	pad := ""
	if width > 10 {
		pad = strings.Repeat("x", width-10)
	}
	for i := range n {
		fmt.Fprintf(os.Stdout, "line %05d%s\n", i, pad)
	}
	fmt.Fprintln(os.Stderr, "done")
	return 0
}

// alloc MB: allocate and touch MB MiB, then run forever.
func allocWorkload(a wargs) int {
	mb := a.num(0, "1")
	var keep [][]byte
	for range mb {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
	}
	fmt.Fprintln(os.Stdout, "allocated", len(keep))
	select {}
}

// listen-port ADDR [FILE]: serve HTTP 200 on ADDR (and accept TCP), write
// FILE when listening, run forever.
func listenPortWorkload(a wargs) int {
	ln, err := net.Listen("tcp", a.arg(0, "127.0.0.1:0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ready(a.arg(1, ""), ln.Addr().String())
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	fmt.Fprintln(os.Stderr, err)
	return 2
}

// crash-seq FILE D1,D2,...: the k-th run (counted in FILE) lives Dk and
// exits 1; once the list is used up it runs forever.
func crashSeqWorkload(a wargs) int {
	file, seq := a.arg(0, ""), strings.Split(a.arg(1, ""), ",")
	k := 0
	if b, err := os.ReadFile(file); err == nil {
		k, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if err := os.WriteFile(file, []byte(strconv.Itoa(k+1)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if k >= len(seq) {
		select {}
	}
	time.Sleep(parseDur(seq[k]))
	return 1
}

// ready writes content to file atomically, if file is set.
func ready(file, content string) {
	if file == "" {
		return
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err == nil {
		_ = os.Rename(tmp, file)
	}
}

// WaitFor polls cond every few milliseconds until it returns true, failing
// the test with what when timeout (scaled by testtime.Scale) passes first.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	timeout = testtime.Scaled(timeout)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// ReadFile waits until file exists and returns its content.
func ReadFile(t testing.TB, timeout time.Duration, file string) string {
	t.Helper()
	var b []byte
	WaitFor(t, timeout, "file "+filepath.Base(file), func() bool {
		var err error
		b, err = os.ReadFile(file)
		return err == nil
	})
	return string(b)
}

// Alive reports whether pid names a live process (present and not a zombie).
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	st := s[i+2]
	return st != 'Z' && st != 'X'
}
