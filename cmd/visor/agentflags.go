package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"

	"github.com/visorhq/visor/agent"
	"github.com/visorhq/visor/internal/version"
)

// agentOptions is everything `visor agent` was asked to do. Most flags
// write straight into cfg; the others are resolved by finish.
type agentOptions struct {
	globals    globals
	cfg        agent.Config
	configFile string
	dev        bool
	devData    string
	devClient  string
	devPeer    string
	logLevel   hclog.Level
	logJSON    bool
	httpAddr   string
	tokenFile  string
	ports      [2]int
	// allowRoot is --allow-root-instances; unset means: allowed with
	// --dev only.
	allowRoot optBool
	// stopOnExit is --stop-on-exit; unset means: with --dev only, whose
	// registry may die with the agent (issue 17: Ctrl-C on make run left
	// instances that no registry knew).
	stopOnExit optBool
	// tempDataDir reports that --dev chose no data dir: runAgent makes a
	// fresh temporary one (parsing has no side effects).
	tempDataDir bool
}

// newAgentFlagSet returns the agent's flags, global ones included, bound
// to o. Every flag can also be set by VISOR_<FLAG> and by the config file.
func newAgentFlagSet(o *agentOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("visor agent", pflag.ContinueOnError)
	o.globals.bind(fs)
	agentFlags(fs, o)
	fs.VisitAll(func(f *pflag.Flag) {
		if len(f.Annotations[envAnnotation]) == 0 {
			_ = fs.SetAnnotation(f.Name, envAnnotation, []string{envName(f.Name)})
		}
	})
	return fs
}

// agentFlags declares the agent's own flags on fs, writing into o. Their
// defaults are the agent's (agent.DefaultConfig, the one source of them);
// -dev changes a few (see finish).
func agentFlags(fs *pflag.FlagSet, o *agentOptions) {
	c, d := &o.cfg, agent.DefaultConfig()
	fs.StringVar(&o.configFile, "config", "", "JSON config file: keys are flag names with underscores (env VISOR_CONFIG)")
	fs.BoolVar(&o.dev, "dev", false, "development mode: run an embedded single-node etcd in this process")
	fs.StringVar(&o.devData, "dev-data-dir", "", "dev mode: etcd data directory (default: <data-dir>/etcd)")
	fs.StringVar(&o.devClient, "dev-client-url", "http://127.0.0.1:2379", "dev mode: embedded etcd client URL")
	fs.StringVar(&o.devPeer, "dev-peer-url", "http://127.0.0.1:2380", "dev mode: embedded etcd peer URL")
	fs.StringVar(&c.HostID, "host", "", "host id (default: the hostname)")
	fs.StringVar(&c.Addr, "addr", "", "address clients reach this host's instances at (default: the host id)")
	parsedVar(fs, &c.Labels, "labels", "", "k=v,...", "host labels, k=v[,k=v...]", parseLabels)
	parsedVar(fs, &c.Capacity, "capacity", "auto", "count", "most instances this host runs: auto (from memory and the pid limit), unlimited, or a count", parseCapacity)
	parsedVar(fs, &c.InstanceMemory, "instance-memory", memoryText(d.InstanceMemory), "size", "memory an instance reserves when its process type declares none (sizes --capacity auto)", parseInstanceMemory)
	parsedVar(fs, &c.StartRate, "start-rate", strconv.FormatFloat(d.StartRate, 'g', -1, 64), "rate", "most instance starts per second on this host (token bucket)", parseRate)
	parsedVar(fs, &c.StartBurst, "start-burst", strconv.Itoa(d.StartBurst), "count", "starts allowed at once before --start-rate applies", parsePositive)
	fs.DurationVar(&c.TTL, "ttl", d.TTL, "host lease TTL (keepalive every TTL/3)")
	fs.StringVar(&c.DataDir, "data-dir", "", "state, logs and artifact cache (default /var/lib/visor; dev: a fresh temp dir)")
	fs.StringVar(&c.RunDir, "run-dir", "", "directory of the unix socket agent.sock (default /run/visor; dev: <data-dir>/run)")
	apiFlags(fs, o)
	parsedVar(fs, &o.ports, "port-range", fmt.Sprintf("%d-%d", d.PortMin, d.PortMax), "min-max", "ports given to instances as $PORT", parsePortRange)
	fs.IntVar(&c.MaxParallel, "max-parallel", d.MaxParallel, "tickets executed at once")
	fs.Var(&o.allowRoot, "allow-root-instances", "start instances that would run as root (proc types without a user, or user root) (default: false; with --dev: true)")
	fs.Lookup("allow-root-instances").NoOptDefVal = "true"
	fs.Var(&o.stopOnExit, "stop-on-exit", "stop every instance when the agent exits (default: leave them running; with --dev: true)")
	fs.Lookup("stop-on-exit").NoOptDefVal = "true"
	fs.DurationVar(&c.StopAfterDisconnect, "stop-after-disconnect", 0, "stop instances after etcd has been unreachable this long (0: never)")
	fs.DurationVar(&c.LostGrace, "lost-grace", d.LostGrace, "reconciler: how long a host's lease must be gone before its instances are replaced")
	fs.DurationVar(&c.ReconcileInterval, "reconcile-interval", d.ReconcileInterval, "reconciler: period of the full pass (it also acts on registry events)")
	fs.BoolVar(&c.EnablePprof, "enable-pprof", false, "serve Go's /debug/pprof profiles on the agent API (same access rules as the rest of it)")
	fs.BoolVar(&c.DisableReconciler, "no-reconciler", false, "never run the reconciler on this agent (it is elected among the others)")
	fs.StringVar(&c.DNSAddr, "dns-addr", "", "serve DNS for service endpoints (SRV/A under visor.) on this address, e.g. 127.0.0.1:8600 (default off)")
	fs.StringVar(&c.Cgroups, "cgroups", d.Cgroups, "resource limits backend: auto, v2, v1 or none")
	artifactFlags(fs, c, d)
	parsedVar(fs, &o.logLevel, "log-level", "info", "level", "log level: trace, debug, info, warn, error", parseLogLevel)
	fs.BoolVar(&o.logJSON, "log-json", false, "log as JSON lines")
}

// apiFlags declares the flags of the agent's local API.
func apiFlags(fs *pflag.FlagSet, o *agentOptions) {
	c, d := &o.cfg, agent.DefaultConfig()
	fs.StringVar(&o.httpAddr, "http-addr", "", "HTTP API listen address, e.g. 127.0.0.1:7777; needs --token-file (default \"off\": the unix socket only; dev: 127.0.0.1:7777 without a token)")
	fs.StringVar(&c.Token, "token", "", "a single bearer token of the HTTP API with the operator scope (prefer --token-file)")
	fs.StringVar(&o.tokenFile, "token-file", "", "JSON file of the HTTP API's tokens: {\"tokens\":[{\"name\":..,\"scopes\":[\"read\"|\"logs\"|\"register\"|\"operator\"],\"sha256\":..}]}; mode 0600, owned by root")
	fs.BoolVar(&c.InsecureHTTP, "insecure-http", false, "serve the HTTP API without a token (loopback only; every local user is an operator). --dev implies it when no token is given")
	fs.StringVar(&c.SocketGroup, "socket-group", "", "group of the unix socket (mode 0660); its members get --socket-group-scopes (default: the agent's group)")
	parsedVar(fs, &c.SocketGroupScopes, "socket-group-scopes", scopesText(d.SocketGroupScopes), "scopes", "scopes of the socket group's members: read, logs, register, operator (comma-separated)", parseScopes)
	fs.StringVar(&c.TLSCertFile, "tls-cert", "", "serve the HTTP API over TLS with this certificate")
	fs.StringVar(&c.TLSKeyFile, "tls-key", "", "TLS key for --tls-cert")
	fs.IntVar(&c.LogStreams, "log-streams", d.LogStreams, "most logs requests served at once (429 beyond)")
	fs.IntVar(&c.LogStreamsPerClient, "log-streams-per-client", d.LogStreamsPerClient, "most logs requests served at once to one client (remote IP, or uid on the socket)")
	fs.IntVar(&c.HTTPMaxConns, "http-max-conns", d.HTTPMaxConns, "most open HTTP API connections (never more than half the fd limit); more are closed at once")
	fs.IntVar(&c.HTTPMaxConnsPerClient, "http-max-conns-per-client", d.HTTPMaxConnsPerClient, "most open HTTP API connections from one remote IP")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", d.HTTPIdleTimeout, "close HTTP API connections idle this long")
}

// artifactFlags declares the flags of the artifact fetch, unpack and cache
// bounds (agent.Config.Artifact*), with the defaults of d.
func artifactFlags(fs *pflag.FlagSet, c *agent.Config, d agent.Config) {
	fs.DurationVar(&c.ArtifactConnectTimeout, "artifact-connect-timeout", d.ArtifactConnectTimeout, "artifact fetch: bound on connecting (TCP, TLS, until the response headers)")
	fs.DurationVar(&c.ArtifactTimeout, "artifact-timeout", d.ArtifactTimeout, "artifact fetch: bound on one whole fetch and unpacking")
	fs.DurationVar(&c.ArtifactStallTimeout, "artifact-stall-timeout", d.ArtifactStallTimeout, "artifact fetch: fail when no bytes arrive for this long")
	fs.BoolVar(&c.ArtifactAllowLinkLocal, "artifact-allow-link-local", false, "artifact fetch: allow link-local targets (169.254.0.0/16, fe80::/10: cloud metadata services)")
	parsedVar(fs, &c.ArtifactMaxBytes, "artifact-max-bytes", bytesText(d.ArtifactMaxBytes), "bytes", "artifact fetch: largest artifact (bytes; KiB, MiB, GiB, TiB suffixes)", parseBytes)
	parsedVar(fs, &c.ArtifactMaxUnpackedBytes, "artifact-max-unpacked-bytes", bytesText(d.ArtifactMaxUnpackedBytes), "bytes", "largest uncompressed tar stream of an artifact, skipped entries included", parseBytes)
	fs.IntVar(&c.ArtifactMaxEntries, "artifact-max-entries", d.ArtifactMaxEntries, "most entries of an artifact (directories its names imply included)")
	parsedVar(fs, &c.ArtifactRedirectHosts, "artifact-redirect-hosts", "", "hosts", "hosts (name or name:port, comma-separated) artifact URLs may redirect to besides their own", parseList)
	fs.IntVar(&c.ArtifactFetchParallel, "artifact-fetch-parallel", d.ArtifactFetchParallel, "artifact fetches (and unpackings) at once")
	fs.DurationVar(&c.ArtifactCacheMaxAge, "artifact-cache-max-age", d.ArtifactCacheMaxAge, "remove cached artifacts and releases unused this long (never one an instance uses)")
	parsedVar(fs, &c.ArtifactCacheMaxBytes, "artifact-cache-max-bytes", bytesText(d.ArtifactCacheMaxBytes), "bytes", "shrink the artifact cache, least recently used first, beyond this size", parseBytes)
}

// parseAgentFlags parses the agent's arguments, environment and config
// file without side effects, and returns the resulting options or an error
// naming the offending flag or field.
func parseAgentFlags(args []string) (agentOptions, error) {
	var o agentOptions
	fs := newAgentFlagSet(&o)
	if err := fs.Parse(normalize(fs, args, nil)); err != nil {
		return o, usageError("agent: %v", err)
	}
	if fs.NArg() > 0 {
		return o, usageError("agent: unexpected argument %q", fs.Arg(0))
	}
	if err := o.globals.check(fs); err != nil {
		return o, err
	}
	if !fs.Changed("config") {
		o.configFile = os.Getenv("VISOR_CONFIG")
	}
	var file *configFile
	if o.configFile != "" {
		var err error
		if file, err = readConfigFile(o.configFile, fs, "config"); err != nil {
			return o, fmt.Errorf("agent: %w", err)
		}
	}
	if err := applySources(fs, file); err != nil {
		return o, fmt.Errorf("agent: %w", err)
	}
	if err := o.finish(); err != nil {
		return o, err
	}
	if err := o.cfg.Validate(); err != nil {
		return o, usageError("agent: %v", err)
	}
	return o, nil
}

// finish derives what the flags do not give directly: the defaults that
// depend on -dev, the token file's tokens, the port range.
func (o *agentOptions) finish() error {
	c := &o.cfg
	switch h := o.httpAddr; {
	case h == "off", h == "" && !o.dev:
		c.DisableHTTP = true
	case h == "":
		c.HTTPAddr = agent.DefaultConfig().HTTPAddr
	default:
		c.HTTPAddr = h
	}
	if o.tokenFile != "" {
		tokens, err := agent.LoadTokenFile(o.tokenFile)
		if err != nil {
			return usageError("agent: %v", err)
		}
		c.Tokens = tokens
	}
	if o.dev && c.Token == "" && len(c.Tokens) == 0 && !c.DisableHTTP {
		// The agent logs a warning that its HTTP API is open.
		c.InsecureHTTP = true
	}
	c.PortMin, c.PortMax = o.ports[0], o.ports[1]
	// Least privilege by default (issue 14): a production agent refuses
	// instances that would run as root unless allowed; -dev allows them,
	// so a newcomer's first proc type (no user) runs.
	c.RefuseRootInstances = !o.dev
	if o.allowRoot.set {
		c.RefuseRootInstances = !o.allowRoot.val
	}
	c.Version = version.Version
	switch {
	case c.DataDir != "":
	case o.dev:
		// Placeholder for validation; runAgent makes the real temp dir.
		o.tempDataDir = true
		c.DataDir = filepath.Join(os.TempDir(), "visor-dev")
	default:
		c.DataDir = "/var/lib/visor"
	}
	c.StopOnExit = o.dev
	if o.stopOnExit.set {
		c.StopOnExit = o.stopOnExit.val
	}
	if o.dev && !c.StopOnExit && o.tempDataDir {
		return usageError("agent: --dev --stop-on-exit=false needs --data-dir: the registry of a temporary data dir is gone with the agent, and instances left running would be known to none")
	}
	switch {
	case c.RunDir != "":
	case o.dev:
		c.RunDir = filepath.Join(c.DataDir, "run")
	default:
		c.RunDir = "/run/visor"
	}
	return nil
}

// parsed is a flag whose text is parsed into *dst when set; String is the
// text as given, so that help shows the default as written.
type parsed[T any] struct {
	dst   *T
	text  string
	typ   string
	parse func(string) (T, error)
}

func (p *parsed[T]) Set(s string) error {
	v, err := p.parse(strings.TrimSpace(s))
	if err != nil {
		return err
	}
	*p.dst, p.text = v, s
	return nil
}

func (p *parsed[T]) String() string { return p.text }
func (p *parsed[T]) Type() string   { return p.typ }

// parsedVar declares a flag of fs whose text parse turns into *dst; def
// is its default text, typ the name its help shows for the value.
func parsedVar[T any](fs *pflag.FlagSet, dst *T, name, def, typ, usage string, parse func(string) (T, error)) {
	p := &parsed[T]{dst: dst, typ: typ, parse: parse}
	if err := p.Set(def); err != nil {
		panic(fmt.Sprintf("flag %s: default %q: %v", name, def, err))
	}
	fs.Var(p, name, usage)
}

func parseLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	labels := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not k=v", kv)
		}
		labels[k] = v
	}
	return labels, nil
}

func parseCapacity(s string) (int, error) {
	switch s {
	case "auto", "0":
		return 0, nil
	case "unlimited", "-1":
		return -1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q is not auto, unlimited or a count above 0", s)
	}
	return n, nil
}

func parseInstanceMemory(s string) (int64, error) {
	n, err := parseMemory(s)
	if err != nil || n < 1<<20 {
		return 0, fmt.Errorf("%q is not a size of at least 1M, such as 128M", s)
	}
	return n, nil
}

func parseRate(s string) (float64, error) {
	r, err := strconv.ParseFloat(s, 64)
	if err != nil || r <= 0 || math.IsInf(r, 0) || math.IsNaN(r) {
		return 0, fmt.Errorf("%q is not a positive number of starts per second", s)
	}
	return r, nil
}

func parsePositive(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q is not a count above 0", s)
	}
	return n, nil
}

func parseScopes(s string) ([]agent.Scope, error) {
	scopes, err := agent.ParseScopes(s)
	if err != nil {
		return nil, err
	}
	if scopes == nil {
		scopes = []agent.Scope{} // "": members get nothing
	}
	return scopes, nil
}

func parsePortRange(s string) ([2]int, error) {
	lo, hi, ok := strings.Cut(s, "-")
	min, err1 := strconv.Atoi(lo)
	max, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil {
		return [2]int{}, fmt.Errorf("%q is not MIN-MAX", s)
	}
	return [2]int{min, max}, nil
}

// parseList splits a comma-separated list, dropping empty entries.
func parseList(s string) ([]string, error) {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out, nil
}

func parseLogLevel(s string) (hclog.Level, error) {
	l := hclog.LevelFromString(s)
	if l == hclog.NoLevel {
		return l, fmt.Errorf("%q is not one of trace, debug, info, warn, error", s)
	}
	return l, nil
}

// bytesText is the text parseBytes reads as n: the largest of KiB, MiB,
// GiB and TiB that divides it.
func bytesText(n int64) string {
	for i, suf := range []string{"TiB", "GiB", "MiB", "KiB"} {
		if unit := int64(1) << (10 * (4 - i)); n != 0 && n%unit == 0 {
			return strconv.FormatInt(n/unit, 10) + suf
		}
	}
	return strconv.FormatInt(n, 10)
}

// memoryText is the text parseMemory reads as n: the largest of K, M, G
// and T that divides it.
func memoryText(n int64) string {
	return strings.TrimSuffix(strings.TrimSuffix(bytesText(n), "B"), "i")
}

// scopesText is the text parseScopes reads as scopes.
func scopesText(scopes []agent.Scope) string {
	s := make([]string, len(scopes))
	for i, sc := range scopes {
		s[i] = string(sc)
	}
	return strings.Join(s, ",")
}

// parseBytes reads a byte count: an integer, optionally followed by KiB,
// MiB, GiB or TiB.
func parseBytes(s string) (int64, error) {
	num, mult := s, int64(1)
	for i, suf := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if strings.HasSuffix(s, suf) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(s, suf)), int64(1)<<(10*(i+1))
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a byte count (an integer, optionally with KiB, MiB, GiB or TiB)", s)
	}
	return n * mult, nil
}

// optBool is a boolean flag that remembers whether it was given.
type optBool struct{ set, val bool }

func (b *optBool) String() string {
	if b == nil || !b.set {
		return ""
	}
	return strconv.FormatBool(b.val)
}

func (b *optBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	b.set, b.val = true, v
	return nil
}

func (b *optBool) Type() string { return "bool" }
