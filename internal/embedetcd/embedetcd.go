package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config describes an embedded etcd member. The zero value of every field
// except Dir has a usable default.
type Config struct {
	// Dir is the data directory. Required.
	Dir string
	// Name is the member name. Default "visor-dev".
	Name string
	// ClientURL is where clients connect. Default "http://127.0.0.1:2379".
	ClientURL string
	// PeerURL is where peers connect. Default "http://127.0.0.1:2380".
	PeerURL string
	// StartTimeout bounds how long Start waits for the member to be ready.
	// Default 30s.
	StartTimeout time.Duration
	// Unsafe disables fsync. Only for tests: a crash loses data.
	Unsafe bool
	// MaxTxnOps is the most operations etcd accepts in one transaction.
	// Default 4096 (etcd's own default is 128), so that a Scale of up to
	// 1000 instances is one transaction; a registry on an etcd with the
	// default limit splits it into chunks instead.
	MaxTxnOps uint
	// ClientCertFile, ClientKeyFile and ClientCAFile, when set, serve
	// clients over TLS (ClientURL must be https://); with ClientCAFile,
	// clients must present a certificate signed by it.
	ClientCertFile, ClientKeyFile, ClientCAFile string
	// LogLevel is etcd's own zap level ("debug", "info", "warn", "error").
	// Default "error": etcd is chatty and its logs are not Visor's.
	LogLevel string
}

// Server is a running embedded etcd member.
type Server struct {
	etcd      *embed.Etcd
	clientURL string
}

// Start starts an etcd member and returns once it serves clients, or when
// ctx ends or the start timeout passes, whichever is first.
func Start(ctx context.Context, c Config) (*Server, error) {
	if c.Dir == "" {
		return nil, errors.New("embedetcd: data dir is required")
	}
	c = c.withDefaults()
	cfg, err := c.embedConfig()
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: start: %w", err)
	}
	t := time.NewTimer(c.StartTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedetcd: serve: %w", err)
	case <-t.C:
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedetcd: not ready after %s", c.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Server{etcd: e, clientURL: c.ClientURL}, nil
}

// withDefaults returns c with the documented defaults filled in.
func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "visor-dev"
	}
	if c.ClientURL == "" {
		c.ClientURL = "http://127.0.0.1:2379"
	}
	if c.PeerURL == "" {
		c.PeerURL = "http://127.0.0.1:2380"
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.LogLevel == "" {
		c.LogLevel = "error"
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = 4096
	}
	return c
}

// embedConfig is the etcd member configuration of c (defaults applied).
func (c Config) embedConfig() (*embed.Config, error) {
	curl, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: client url %q: %w", c.ClientURL, err)
	}
	purl, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: peer url %q: %w", c.PeerURL, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(c.Name)
	cfg.UnsafeNoFsync = c.Unsafe
	cfg.MaxTxnOps = c.MaxTxnOps
	cfg.LogLevel = c.LogLevel
	if c.ClientCertFile != "" {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       c.ClientCertFile,
			KeyFile:        c.ClientKeyFile,
			TrustedCAFile:  c.ClientCAFile,
			ClientCertAuth: c.ClientCAFile != "",
		}
		cfg.ClientAutoTLS = false
	}
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	if c.LogLevel == "debug" || c.LogLevel == "info" || c.LogLevel == "warn" {
		cfg.ZapLoggerBuilder = nil // let etcd build its own logger at that level
	}
	// Keep the metrics and the snapshot cadence modest for a dev member.
	cfg.SnapshotCount = 10000
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	return cfg, nil
}

// Endpoint returns the client URL, suitable for clientv3.Config.Endpoints.
func (s *Server) Endpoint() string { return s.clientURL }

// Err returns a channel that receives fatal serving errors.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the member and waits for it to release its ports and files.
func (s *Server) Close() { s.etcd.Close() }
