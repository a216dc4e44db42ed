package fault

import (
	"fmt"
	"os"
	"testing"

	"github.com/visorhq/visor/internal/e2etest"
	"github.com/visorhq/visor/internal/embedetcd"
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
	cfg, err := embedetcd.Member{
		Name: os.Getenv(etcdNameEnv), Dir: os.Getenv(etcdDirEnv),
		ClientURL: os.Getenv(etcdClientEnv), PeerURL: os.Getenv(etcdPeerEnv),
		InitialCluster: os.Getenv(etcdClusterEnv), Token: "visor-fault",
	}.EmbedConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd member:", err)
		return 2
	}
	// Elections within about a second of a leader's death.
	cfg.TickMs = 100
	cfg.ElectionMs = 1000
	return embedetcd.RunMember(cfg)
}
