package fault

import (
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/netnstest"
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
	netnstest.DieWithParent("fault")
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
