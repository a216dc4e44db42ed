package vm

import (
	"fmt"
	"os"
	"testing"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/visorhq/visor/internal/embedetcd"
	"github.com/visorhq/visor/internal/netnstest"
	"github.com/visorhq/visor/internal/proctest"
)

// Environment of the etcd helper mode: the test binary started with
// etcdModeEnv=1 runs one etcd member (TLS for clients and peers) until
// SIGTERM.
const (
	etcdModeEnv    = "VISOR_VM_ETCD"
	etcdNameEnv    = "VISOR_VM_ETCD_NAME"
	etcdDirEnv     = "VISOR_VM_ETCD_DIR"
	etcdClientEnv  = "VISOR_VM_ETCD_CLIENT"
	etcdPeerEnv    = "VISOR_VM_ETCD_PEER"
	etcdClusterEnv = "VISOR_VM_ETCD_CLUSTER"
	etcdCertEnv    = "VISOR_VM_ETCD_CERT" // cert,key,ca
)

func TestMain(m *testing.M) {
	proctest.Main()
	if os.Getenv(etcdModeEnv) == "1" {
		os.Exit(etcdMember())
	}
	if tag := os.Getenv(janitorEnv); tag != "" {
		os.Exit(janitorMain(tag))
	}
	netnstest.DieWithParent("vm")
	os.Exit(m.Run())
}

// etcdMember runs one member of the suite's etcd cluster, configured from
// the environment, until SIGTERM or SIGINT.
func etcdMember() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "etcd member:", err)
		return 2
	}
	var certs [3]string
	if _, err := fmt.Sscanf(os.Getenv(etcdCertEnv), "%s %s %s", &certs[0], &certs[1], &certs[2]); err != nil {
		return fail(fmt.Errorf("%s: %w", etcdCertEnv, err))
	}
	cfg, err := embedetcd.Member{
		Name: os.Getenv(etcdNameEnv), Dir: os.Getenv(etcdDirEnv),
		ClientURL: os.Getenv(etcdClientEnv), PeerURL: os.Getenv(etcdPeerEnv),
		InitialCluster: os.Getenv(etcdClusterEnv), Token: "visor-vm",
	}.EmbedConfig()
	if err != nil {
		return fail(err)
	}
	// Clients and peers present certificates of the suite's CA
	// (--client-cert-auth): with auth on, etcd takes a client's user from
	// its certificate's common name unless it authenticates with a
	// password, which then wins.
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: certs[0], KeyFile: certs[1], TrustedCAFile: certs[2], ClientCertAuth: true}
	cfg.PeerTLSInfo = transport.TLSInfo{CertFile: certs[0], KeyFile: certs[1], TrustedCAFile: certs[2], ClientCertAuth: true}
	// Password checks at the lowest bcrypt cost: at the default one, every
	// authentication took seconds in a -race build on a loaded machine,
	// beyond the clients' dial timeout.
	cfg.BcryptCost = 4
	return embedetcd.RunMember(cfg)
}
