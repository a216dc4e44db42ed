package fault

import (
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"
	"golang.org/x/sys/unix"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/proctest"
)

// Environment of the etcd helper mode: the test binary started with
// etcdModeEnv=1 runs one etcd member until SIGTERM.
const (
	etcdModeEnv    = "VISOR_FAULT_ETCD"
	etcdNameEnv    = "VISOR_FAULT_ETCD_NAME"
	etcdDirEnv     = "VISOR_FAULT_ETCD_DIR"
	etcdClientEnv  = "VISOR_FAULT_ETCD_CLIENT"
	etcdPeerEnv    = "VISOR_FAULT_ETCD_PEER"
	etcdClusterEnv = "VISOR_FAULT_ETCD_CLUSTER"
	// reportEnv names a file the figures are written to as JSON.
	reportEnv = "VISOR_FAULT_REPORT"
	// logDirEnv names a directory that keeps the agents' and members' logs
	// after the run (default: the test's temp dir, removed at the end).
	logDirEnv = "VISOR_FAULT_LOGDIR"
)

func TestMain(m *testing.M) {
	proctest.Main()
	if os.Getenv(etcdModeEnv) == "1" {
		os.Exit(etcdMember())
	}
	if tag := os.Getenv(janitorEnv); tag != "" {
		os.Exit(janitorMain(tag))
	}
	dieWithParent()
	code := m.Run()
	e2etest.Cleanup()
	os.Exit(code)
}

// etcdMember runs one member of the suite's etcd cluster, configured from
// the environment, until SIGTERM or SIGINT.
func etcdMember() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "etcd member:", err)
		return 2
	}
	curl, err := url.Parse(os.Getenv(etcdClientEnv))
	if err != nil {
		return fail(err)
	}
	purl, err := url.Parse(os.Getenv(etcdPeerEnv))
	if err != nil {
		return fail(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	cfg := embed.NewConfig()
	cfg.Name = os.Getenv(etcdNameEnv)
	cfg.Dir = os.Getenv(etcdDirEnv)
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = os.Getenv(etcdClusterEnv)
	cfg.InitialClusterToken = "visor-fault"
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.LogLevel = "error" // to the member's log file
	// Elections within about a second of a leader's death.
	cfg.TickMs = 100
	cfg.ElectionMs = 1000
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fail(err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fail(err)
	case <-sigs:
		return 0
	}
	select {
	case err := <-e.Err():
		return fail(err)
	case <-sigs:
		return 0
	}
}

// dieWithParent asks the kernel to SIGKILL this test process when its
// parent (go test) dies, so that kill -9 of go test ends the suite too
// (its agents and members follow by their own parent-death signal, and the
// janitor removes the rest). The signal is armed on the calling thread and
// fires when the parent dies only while that thread lives: the main
// goroutine stays locked to it for the life of the process.
func dieWithParent() {
	runtime.LockOSThread() // for good: see above
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "fault: cannot arm the parent-death signal:", err)
		return
	}
	if os.Getppid() != ppid { // the parent died before it was armed
		os.Exit(2)
	}
}
