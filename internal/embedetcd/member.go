package embedetcd

import (
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"go.etcd.io/etcd/server/v3/embed"
)

// Member is one member of a static multi-member cluster run by a test
// harness in a helper process of its own (test/fault, test/vm), so that
// the harness can kill and restart members one by one.
type Member struct {
	Name, Dir          string
	ClientURL, PeerURL string // each listened on and advertised
	InitialCluster     string // name=peerURL,... of every member
	Token              string // the initial cluster token
}

// EmbedConfig returns m's etcd configuration: a new cluster, no fsync
// (test data only), etcd's own logs at error level. The caller may adjust
// it (TLS, election timing) before RunMember.
func (m Member) EmbedConfig() (*embed.Config, error) {
	curl, err := url.Parse(m.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("member %s: client URL: %w", m.Name, err)
	}
	purl, err := url.Parse(m.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("member %s: peer URL: %w", m.Name, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.Dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = m.InitialCluster
	cfg.InitialClusterToken = m.Token
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	return cfg, nil
}

// RunMember runs the member cfg until SIGTERM or SIGINT and returns the
// helper process's exit code: 0 after a signal, 2 (with the error on
// stderr) when the member fails to start or stops on an error.
func RunMember(cfg *embed.Config) int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "etcd member:", err)
		return 2
	}
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
