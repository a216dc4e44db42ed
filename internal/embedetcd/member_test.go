package embedetcd

import (
	"strings"
	"testing"
)

// TestMemberEmbedConfig: a member's configuration listens on and
// advertises its URLs in a new cluster of the given members and token;
// a bad URL is an error naming the member and which URL.
func TestMemberEmbedConfig(t *testing.T) {
	m := Member{Name: "e1", Dir: t.TempDir(), ClientURL: "http://198.51.100.1:2379", PeerURL: "http://198.51.100.1:2380",
		InitialCluster: "e1=http://198.51.100.1:2380,e2=http://198.51.100.2:2380", Token: "tok"}
	cfg, err := m.EmbedConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "e1" || cfg.Dir != m.Dir || cfg.InitialCluster != m.InitialCluster || cfg.InitialClusterToken != "tok" ||
		cfg.ClusterState != "new" || !cfg.UnsafeNoFsync ||
		cfg.ListenClientUrls[0].String() != m.ClientURL || cfg.AdvertiseClientUrls[0].String() != m.ClientURL ||
		cfg.ListenPeerUrls[0].String() != m.PeerURL || cfg.AdvertisePeerUrls[0].String() != m.PeerURL {
		t.Errorf("config does not match the member: %+v", cfg)
	}
	m.PeerURL = "http://[bad"
	if _, err := m.EmbedConfig(); err == nil || !strings.Contains(err.Error(), "member e1: peer URL") {
		t.Errorf("bad peer URL: %v", err)
	}
}
