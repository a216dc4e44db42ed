package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config configures an Agent. The zero value of every field but HostID,
// DataDir and RunDir has a documented default (DefaultConfig, the one
// source of them); Validate names the first field that is wrong.
type Config struct {
	// HostID identifies this host in the registry. Default: the hostname.
	HostID string
	// Addr is the address other hosts and clients reach this host's
	// instances at. Default: HostID.
	Addr string
	// Labels are free-form host labels, written to the host record.
	Labels map[string]string
	// Capacity is the most instances this host runs (its slots). 0 means
	// automatic: what the host's memory and pid limit allow (see
	// capacity.go: memory / InstanceMemory, pids / DefaultInstancePids,
	// whichever is smaller); -1 means unlimited. An explicit capacity
	// wins over the computed one, and then memory is counted only for
	// the process types that declare it.
	Capacity int
	// InstanceMemory is the memory an instance reserves on this host when
	// its process type declares none (registry.Limits.MemoryBytes); it
	// sizes the automatic capacity. Default DefaultInstanceMemory
	// (128 MiB).
	InstanceMemory int64
	// StartRate bounds the starts per second on this host (a token bucket
	// of StartBurst): a burst of tickets cannot starve the agent's own
	// lease keepalive. Stops, restarts and signals are never held back by
	// it. Defaults DefaultStartRate (50/s) and DefaultStartBurst (50).
	StartRate  float64
	StartBurst int

	// TTL is the host lease's time to live. Default 10s; minimum 2s.
	TTL time.Duration

	// DataDir holds the supervisor's state, instance logs and the artifact
	// cache. Required.
	DataDir string
	// RunDir holds the unix socket agent.sock. Required.
	RunDir string

	// HTTPAddr is the HTTP API's listen address. Default "127.0.0.1:7777";
	// "" after defaults means "off" only if DisableHTTP is set. The HTTP
	// API needs Tokens (or Token) unless InsecureHTTP: Validate refuses an
	// HTTP listener nobody could authenticate to.
	HTTPAddr string
	// DisableHTTP turns the HTTP listener off (the unix socket stays).
	DisableHTTP bool
	// Tokens are the bearer tokens the HTTP API accepts, each a principal
	// with scopes (see Token, Scope and LoadTokenFile).
	Tokens []Token
	// Token is a single bearer token with the operator scope, principal
	// "token" (the older form of Tokens).
	Token string
	// InsecureHTTP serves the HTTP API without a token: a request without
	// an Authorization header is the operator "anonymous". Only on a
	// loopback address; for development (visor agent -dev). Default off.
	InsecureHTTP bool
	// SocketGroup is the group (name or gid) of the unix socket, which is
	// mode 0660: root and the agent's user are operators on it, members of
	// this group get SocketGroupScopes, nobody else can connect. Default:
	// the agent's primary group.
	SocketGroup string
	// SocketGroupScopes are the scopes of the socket group's members.
	// Default [read]; an empty non-nil list gives members nothing.
	SocketGroupScopes []Scope
	// TLSCertFile and TLSKeyFile, when set, serve HTTPS. They are loaded
	// when the agent starts: a missing or bad file fails the start.
	TLSCertFile, TLSKeyFile string

	// LogStreams caps the logs requests served at once, on the socket and
	// over HTTP together; LogStreamsPerClient caps those of one client (its
	// remote IP over HTTP, its uid on the socket). A request beyond either
	// gets 429. Defaults DefaultLogStreams (64) and
	// DefaultLogStreamsPerClient (8).
	LogStreams, LogStreamsPerClient int
	// HTTPMaxConns caps the HTTP API's open connections, and
	// HTTPMaxConnsPerClient those from one remote IP; a connection beyond
	// either is closed at once. HTTPMaxConns is also never more than half
	// the descriptor limit. Defaults DefaultHTTPMaxConns (1024) and
	// DefaultHTTPMaxConnsPerClient (64).
	HTTPMaxConns, HTTPMaxConnsPerClient int
	// HTTPIdleTimeout closes API connections idle that long between
	// requests; a new connection must send its first request header within
	// it (at most 10s). Default DefaultHTTPIdleTimeout (60s).
	HTTPIdleTimeout time.Duration

	// PortMin and PortMax bound the ports given to instances ($PORT).
	// Default 20000-29999.
	PortMin, PortMax int

	// ClaimDelay bounds the jitter before a claim by the host ranked first
	// for a ticket (see placement.go). Default 20ms.
	ClaimDelay time.Duration
	// ClaimBackup is how much longer each next-ranked host waits before it
	// claims a ticket nobody has claimed. Default 500ms.
	ClaimBackup time.Duration
	// MaxParallel bounds tickets executed at once. Default 64.
	MaxParallel int
	// StatusInterval is how often host status (load, memory) is written.
	// Default 10s; never less than 10s.
	StatusInterval time.Duration

	// EnablePprof serves net/http/pprof under /debug/pprof/ on the API
	// (the unix socket, and the HTTP address under its access rules).
	EnablePprof bool
	// StopOnExit stops every instance when the agent shuts down. Default
	// off: instances keep running and the next agent re-adopts them.
	StopOnExit bool
	// StopAfterDisconnect, when > 0, stops every instance once etcd has been
	// unreachable for that long. Default 0: never.
	StopAfterDisconnect time.Duration

	// LostGrace is how long a host's lease must have been gone before the
	// reconciler marks its instances lost and replaces them. Default 30s.
	LostGrace time.Duration
	// ReconcileInterval is the period of the reconciler's full pass (it also
	// acts on registry events). Default 30s.
	ReconcileInterval time.Duration
	// DisableReconciler keeps this agent out of the reconciler election.
	DisableReconciler bool

	// DNSAddr, when set, serves DNS (SRV and A records of healthy service
	// endpoints under "visor.") on this UDP and TCP address. Default off.
	DNSAddr string

	// RefuseRootInstances refuses to start an instance that would run as
	// root (a proc type without user on an agent running as root, or with
	// a user of uid 0): the start ticket is released with a reason naming
	// the fix. Default false (allowed) for a Config built in code; `visor
	// agent` sets it unless -allow-root-instances or -dev.
	RefuseRootInstances bool

	// Cgroups selects the supervisor's resource-limit backend:
	// "auto" (default), "v2", "v1" or "none".
	Cgroups string

	// ArtifactConnectTimeout bounds connecting to an artifact's server:
	// the TCP connect, the TLS handshake, and the wait for the response
	// headers. Default 30s.
	ArtifactConnectTimeout time.Duration
	// ArtifactTimeout bounds one artifact's whole fetch and unpacking
	// (from when it gets one of the ArtifactFetchParallel slots). A start
	// waiting for an artifact is also cancelled when the instance's stop
	// is requested, its ticket is deleted, or the agent shuts down.
	// Default 10m.
	ArtifactTimeout time.Duration
	// ArtifactStallTimeout fails a fetch that receives no bytes for this
	// long once the response started (a server that sends a little and
	// then stalls), naming the stall, long before ArtifactTimeout.
	// Default 60s.
	ArtifactStallTimeout time.Duration
	// ArtifactAllowLinkLocal lets artifact URLs (and their redirects)
	// reach link-local addresses (169.254.0.0/16, fe80::/10), where cloud
	// metadata services answer with credentials. Default false: such a
	// fetch is refused before anything is sent.
	ArtifactAllowLinkLocal bool
	// ArtifactMaxBytes bounds a downloaded (or copied) artifact. Default
	// 2 GiB.
	ArtifactMaxBytes int64
	// ArtifactMaxUnpackedBytes bounds what an artifact unpacks to: its
	// uncompressed tar stream (headers and data of every entry, skipped
	// ones too) and the sum of its entries' sizes. Default 8 GiB.
	ArtifactMaxUnpackedBytes int64
	// ArtifactMaxEntries bounds the entries of an artifact. Default 100000.
	ArtifactMaxEntries int
	// ArtifactRedirectHosts lists hosts ("name" or "name:port") an
	// artifact URL may redirect to besides its own; the scheme never
	// changes. Default none: redirects stay on the URL's scheme and host.
	ArtifactRedirectHosts []string
	// ArtifactFetchParallel bounds the artifact fetches (and unpackings)
	// running at once; starts waiting for an artifact take no ticket
	// executor meanwhile. Default 8.
	ArtifactFetchParallel int
	// ArtifactCacheMaxAge: cached artifacts and releases unused this long
	// are removed, unless an instance on this host uses them. Default
	// 168h (7 days).
	ArtifactCacheMaxAge time.Duration
	// ArtifactCacheMaxBytes: when the cache is larger, the least recently
	// used artifacts and releases that no instance uses are removed until
	// it fits. Default 20 GiB.
	ArtifactCacheMaxBytes int64

	// Version is written to the host record.
	Version string

	// Logger receives the agent's logs. Default: a null logger.
	Logger hclog.Logger

	// Ready is called once, when the first registry session is up (the
	// systemd READY=1 point). Stopping is called when shutdown begins.
	Ready, Stopping func()
}

var hostIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// DefaultConfig returns the default of every Config field that has one:
// what New fills into a zero field, and what `visor agent` shows and uses
// as its flags' defaults (cmd/visor/agentflags.go), so that the two never
// drift. The fields with no default here are HostID and Addr (the
// hostname, found when the agent starts), DataDir and RunDir (required),
// and the booleans and lists whose zero value is the default. Capacity 0
// is itself the default: automatic.
func DefaultConfig() Config {
	return Config{
		InstanceMemory:           DefaultInstanceMemory,
		StartRate:                DefaultStartRate,
		StartBurst:               DefaultStartBurst,
		TTL:                      10 * time.Second,
		HTTPAddr:                 "127.0.0.1:7777",
		SocketGroupScopes:        []Scope{ScopeRead},
		LogStreams:               DefaultLogStreams,
		LogStreamsPerClient:      DefaultLogStreamsPerClient,
		HTTPMaxConns:             DefaultHTTPMaxConns,
		HTTPMaxConnsPerClient:    DefaultHTTPMaxConnsPerClient,
		HTTPIdleTimeout:          DefaultHTTPIdleTimeout,
		PortMin:                  20000,
		PortMax:                  29999,
		ClaimDelay:               20 * time.Millisecond,
		ClaimBackup:              500 * time.Millisecond,
		MaxParallel:              64,
		StatusInterval:           10 * time.Second,
		LostGrace:                30 * time.Second,
		ReconcileInterval:        30 * time.Second,
		Cgroups:                  "auto",
		ArtifactConnectTimeout:   defaultArtifactConnectTimeout,
		ArtifactTimeout:          defaultArtifactTimeout,
		ArtifactStallTimeout:     defaultArtifactStallTimeout,
		ArtifactMaxBytes:         defaultArtifactMaxBytes,
		ArtifactMaxUnpackedBytes: defaultArtifactMaxUnpacked,
		ArtifactMaxEntries:       defaultArtifactMaxEntries,
		ArtifactFetchParallel:    defaultArtifactFetchParallel,
		ArtifactCacheMaxAge:      defaultArtifactCacheMaxAge,
		ArtifactCacheMaxBytes:    defaultArtifactCacheMaxBytes,
	}
}

// withDefaults returns c with the zero fields that have a default
// (DefaultConfig) filled in.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.HostID == "" {
		if h, err := os.Hostname(); err == nil {
			c.HostID = h
		}
	}
	orDefault(&c.Addr, c.HostID)
	if c.HTTPAddr == "" && !c.DisableHTTP {
		c.HTTPAddr = d.HTTPAddr
	}
	if c.PortMin == 0 && c.PortMax == 0 {
		c.PortMin, c.PortMax = d.PortMin, d.PortMax
	}
	if c.SocketGroupScopes == nil {
		c.SocketGroupScopes = d.SocketGroupScopes
	}
	// Never less often than the default.
	c.StatusInterval = max(c.StatusInterval, d.StatusInterval)
	orDefault(&c.TTL, d.TTL)
	orDefault(&c.ClaimDelay, d.ClaimDelay)
	orDefault(&c.ClaimBackup, d.ClaimBackup)
	orDefault(&c.MaxParallel, d.MaxParallel)
	orDefault(&c.InstanceMemory, d.InstanceMemory)
	orDefault(&c.StartRate, d.StartRate)
	orDefault(&c.StartBurst, d.StartBurst)
	orDefault(&c.LostGrace, d.LostGrace)
	orDefault(&c.ReconcileInterval, d.ReconcileInterval)
	orDefault(&c.Cgroups, d.Cgroups)
	orDefault(&c.LogStreams, d.LogStreams)
	orDefault(&c.LogStreamsPerClient, d.LogStreamsPerClient)
	orDefault(&c.HTTPMaxConns, d.HTTPMaxConns)
	orDefault(&c.HTTPMaxConnsPerClient, d.HTTPMaxConnsPerClient)
	orDefault(&c.HTTPIdleTimeout, d.HTTPIdleTimeout)
	orDefault(&c.ArtifactConnectTimeout, d.ArtifactConnectTimeout)
	orDefault(&c.ArtifactTimeout, d.ArtifactTimeout)
	orDefault(&c.ArtifactStallTimeout, d.ArtifactStallTimeout)
	orDefault(&c.ArtifactMaxBytes, d.ArtifactMaxBytes)
	orDefault(&c.ArtifactMaxUnpackedBytes, d.ArtifactMaxUnpackedBytes)
	orDefault(&c.ArtifactMaxEntries, d.ArtifactMaxEntries)
	orDefault(&c.ArtifactFetchParallel, d.ArtifactFetchParallel)
	orDefault(&c.ArtifactCacheMaxAge, d.ArtifactCacheMaxAge)
	orDefault(&c.ArtifactCacheMaxBytes, d.ArtifactCacheMaxBytes)
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.Ready == nil {
		c.Ready = func() {}
	}
	if c.Stopping == nil {
		c.Stopping = func() {}
	}
	return c
}

// orDefault sets *v to def when *v is the zero value.
func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// maxSocketPath is the longest Unix socket path Linux accepts (sun_path
// holds 108 bytes with the terminating NUL; macOS allows 103).
const maxSocketPath = 107

// Validate reports the first invalid field of c (after defaults), by name.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if !hostIDRe.MatchString(c.HostID) {
		errs = append(errs, fmt.Errorf("host: %q is not a valid host id (lower-case letters, digits, '.', '-'; at most 63)", c.HostID))
	}
	if c.TTL < 2*time.Second {
		errs = append(errs, fmt.Errorf("ttl: %s is below the 2s minimum", c.TTL))
	}
	if c.Capacity < -1 {
		errs = append(errs, fmt.Errorf("capacity: %d is not a count, 0 (automatic) or -1 (unlimited)", c.Capacity))
	}
	if c.InstanceMemory < 1<<20 {
		errs = append(errs, fmt.Errorf("instance_memory: %d bytes is below 1 MiB", c.InstanceMemory))
	}
	if c.StartRate < 0 {
		errs = append(errs, fmt.Errorf("start_rate: %g is negative", c.StartRate))
	}
	if c.StartBurst < 1 {
		errs = append(errs, fmt.Errorf("start_burst: %d must be at least 1", c.StartBurst))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir: required"))
	} else if !filepath.IsAbs(c.DataDir) {
		errs = append(errs, fmt.Errorf("data_dir: %q is not an absolute path", c.DataDir))
	}
	if c.RunDir == "" {
		errs = append(errs, errors.New("run_dir: required"))
	} else if !filepath.IsAbs(c.RunDir) {
		errs = append(errs, fmt.Errorf("run_dir: %q is not an absolute path", c.RunDir))
	} else if sock := filepath.Join(c.RunDir, SocketName); len(sock) > maxSocketPath {
		// The kernel refuses it with a bare "invalid argument" at bind.
		errs = append(errs, fmt.Errorf("run_dir: the API socket %s would be %d bytes long, above the %d a Unix socket path may have; choose a shorter run_dir", sock, len(sock), maxSocketPath))
	}
	if c.PortMin < 1 || c.PortMax > 65535 || c.PortMin > c.PortMax {
		errs = append(errs, fmt.Errorf("port_range: %d-%d is not a range within 1-65535", c.PortMin, c.PortMax))
	}
	if c.MaxParallel < 1 {
		errs = append(errs, fmt.Errorf("max_parallel: %d must be at least 1", c.MaxParallel))
	}
	if c.StopAfterDisconnect < 0 {
		errs = append(errs, fmt.Errorf("stop_after_disconnect: %s is negative", c.StopAfterDisconnect))
	}
	if c.LostGrace < 0 {
		errs = append(errs, fmt.Errorf("lost_grace: %s is negative", c.LostGrace))
	}
	if c.ReconcileInterval < time.Second {
		errs = append(errs, fmt.Errorf("reconcile_interval: %s is below 1s", c.ReconcileInterval))
	}
	if c.DNSAddr != "" {
		if _, _, err := net.SplitHostPort(c.DNSAddr); err != nil {
			errs = append(errs, fmt.Errorf("dns_addr: %q: %v", c.DNSAddr, err))
		}
	}
	switch c.Cgroups {
	case "auto", "v1", "v2", "none":
	default:
		errs = append(errs, fmt.Errorf("cgroups: %q is not one of auto, v1, v2, none", c.Cgroups))
	}
	errs = append(errs, c.validateArtifact()...)
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls_cert/tls_key: both or neither"))
	}
	errs = append(errs, c.validateBounds()...)
	errs = append(errs, c.validateAuth()...)
	return errors.Join(errs...)
}

// validateAuth checks the tokens, the socket group's scopes and the HTTP
// listener's authentication (see Validate).
func (c Config) validateAuth() []error {
	var errs []error
	names := map[string]bool{}
	for _, t := range c.allTokens() {
		if err := t.validate(); err != nil {
			errs = append(errs, fmt.Errorf("tokens: %w", err))
		} else if names[t.Name] {
			errs = append(errs, fmt.Errorf("tokens: name %q given twice", t.Name))
		}
		names[t.Name] = true
	}
	for _, sc := range c.SocketGroupScopes {
		if !sc.valid() {
			errs = append(errs, fmt.Errorf("socket_group_scopes: %q is not one of read, logs, register, operator", sc))
		}
	}
	if !c.DisableHTTP {
		host, _, err := net.SplitHostPort(c.HTTPAddr)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("http_addr: %q: %v", c.HTTPAddr, err))
		case c.InsecureHTTP && !isLoopback(host):
			errs = append(errs, fmt.Errorf("insecure_http: refused on http_addr %q, which is not a loopback address; give the HTTP API tokens (token_file)", c.HTTPAddr))
		case !c.InsecureHTTP && len(c.allTokens()) == 0:
			errs = append(errs, fmt.Errorf("token_file: the HTTP API on %q needs tokens (token_file), or http_addr \"off\" to serve only the unix socket, or insecure_http (loopback, development only)", c.HTTPAddr))
		}
	}
	return errs
}

// allTokens is Tokens plus the single Token as the operator "token".
func (c Config) allTokens() []Token {
	if c.Token == "" {
		return c.Tokens
	}
	out := append([]Token{{Name: "token", Scopes: []Scope{ScopeOperator}, SHA256: HashToken(c.Token)}}, c.Tokens...)
	return out
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validateBounds checks the API's limits and the TLS files (named by path
// when missing or unreadable, so that a typo fails the start, not the
// first HTTPS request).
func (c Config) validateBounds() []error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{
		{"log_streams", c.LogStreams},
		{"log_streams_per_client", c.LogStreamsPerClient},
		{"http_max_conns", c.HTTPMaxConns},
		{"http_max_conns_per_client", c.HTTPMaxConnsPerClient},
	} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("%s: %d must be at least 1", f.name, f.v))
		}
	}
	if c.HTTPIdleTimeout < 0 {
		errs = append(errs, fmt.Errorf("http_idle_timeout: %s is negative", c.HTTPIdleTimeout))
	}
	for _, f := range []struct{ name, path string }{{"tls_cert", c.TLSCertFile}, {"tls_key", c.TLSKeyFile}} {
		if f.path == "" {
			continue
		}
		if fh, err := os.Open(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		} else {
			fh.Close()
		}
	}
	return errs
}

// validateArtifact checks the Artifact* fields (after defaults).
func (c Config) validateArtifact() []error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"artifact_connect_timeout", c.ArtifactConnectTimeout},
		{"artifact_timeout", c.ArtifactTimeout},
		{"artifact_stall_timeout", c.ArtifactStallTimeout},
		{"artifact_cache_max_age", c.ArtifactCacheMaxAge},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %s is negative", d.name, d.v))
		}
	}
	for _, n := range []struct {
		name string
		v    int64
	}{
		{"artifact_max_bytes", c.ArtifactMaxBytes},
		{"artifact_max_unpacked_bytes", c.ArtifactMaxUnpackedBytes},
		{"artifact_max_entries", int64(c.ArtifactMaxEntries)},
		{"artifact_fetch_parallel", int64(c.ArtifactFetchParallel)},
		{"artifact_cache_max_bytes", c.ArtifactCacheMaxBytes},
	} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d is negative", n.name, n.v))
		}
	}
	for _, h := range c.ArtifactRedirectHosts {
		if h == "" || strings.ContainsAny(h, "/ ") {
			errs = append(errs, fmt.Errorf("artifact_redirect_hosts: %q is not a host name or host:port", h))
		}
	}
	return errs
}
