package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	oklogrun "github.com/oklog/run"

	"github.com/visorhq/visor/agent"
	"github.com/visorhq/visor/internal/embedetcd"
	"github.com/visorhq/visor/internal/version"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/systemd"
)

func init() {
	register(&command{
		Name:    "agent",
		Args:    "[flags]",
		Short:   "run the host agent (with -dev: embedded etcd too)",
		RawArgs: true,
		Long: `Every flag can also come from the environment as VISOR_<FLAG> (dashes as
underscores, e.g. VISOR_DATA_DIR) or from the JSON config file given by
-config (keys are flag names with underscores, e.g. "data_dir"; labels may be
an object). Precedence: flag, then environment, then config file.`,
		Run: runAgent,
	})
}

// agentOptions is everything `visor agent` was asked to do.
type agentOptions struct {
	globals    globals
	cfg        agent.Config
	configFile string
	dev        bool
	devData    string
	devClient  string
	devPeer    string
	logLevel   string
	logJSON    bool
	// allowRoot is -allow-root-instances; unset means: allowed with -dev
	// only.
	allowRoot optBool
	// tempDataDir reports that -dev chose no data dir: runAgent makes a
	// fresh temporary one (parsing has no side effects).
	tempDataDir bool
}

// agentFlags declares the agent's flags on fs, writing into o; flags kept
// as strings land in raw and are converted by fill.
func agentFlags(fs *flag.FlagSet, o *agentOptions, raw map[string]*string) {
	o.globals.bind(fs)
	str := func(name, def, usage string) {
		v := new(string)
		raw[name] = v
		fs.StringVar(v, name, def, usage)
	}
	fs.StringVar(&o.configFile, "config", "", "JSON config file (env VISOR_CONFIG)")
	fs.BoolVar(&o.dev, "dev", false, "development mode: run an embedded single-node etcd in this process")
	fs.StringVar(&o.devData, "dev-data-dir", "", "dev mode: etcd data directory (default: <data-dir>/etcd)")
	fs.StringVar(&o.devClient, "dev-client-url", "http://127.0.0.1:2379", "dev mode: embedded etcd client URL")
	fs.StringVar(&o.devPeer, "dev-peer-url", "http://127.0.0.1:2380", "dev mode: embedded etcd peer URL")
	str("host", "", "host id (default: the hostname)")
	str("addr", "", "address clients reach this host's instances at (default: the host id)")
	str("labels", "", "host labels, k=v[,k=v...]")
	str("capacity", "auto", "most instances this host runs: auto (from memory and the pid limit), unlimited, or a count")
	str("instance-memory", "128M", "memory an instance reserves when its process type declares none (sizes -capacity auto)")
	str("start-rate", "50", "most instance starts per second on this host (token bucket)")
	str("start-burst", "50", "starts allowed at once before -start-rate applies")
	str("ttl", "10s", "host lease TTL (keepalive every TTL/3)")
	str("data-dir", "", "state, logs and artifact cache (default /var/lib/visor; dev: a fresh temp dir)")
	str("run-dir", "", "directory of the unix socket agent.sock (default /run/visor; dev: <data-dir>/run)")
	str("http-addr", "", "HTTP API listen address, e.g. 127.0.0.1:7777; needs -token-file (default \"off\": the unix socket only; dev: 127.0.0.1:7777 without a token)")
	str("token", "", "a single bearer token of the HTTP API with the operator scope (prefer -token-file)")
	str("token-file", "", "JSON file of the HTTP API's tokens: {\"tokens\":[{\"name\":..,\"scopes\":[\"read\"|\"logs\"|\"register\"|\"operator\"],\"sha256\":..}]}; mode 0600, owned by root")
	fs.BoolVar(&o.cfg.InsecureHTTP, "insecure-http", false, "serve the HTTP API without a token (loopback only; every local user is an operator). -dev implies it when no token is given")
	str("socket-group", "", "group of the unix socket (mode 0660); its members get -socket-group-scopes (default: the agent's group)")
	str("socket-group-scopes", "read", "scopes of the socket group's members: read, logs, register, operator (comma-separated)")
	str("tls-cert", "", "serve the HTTP API over TLS with this certificate")
	str("tls-key", "", "TLS key for -tls-cert")
	str("log-streams", strconv.Itoa(agent.DefaultLogStreams), "most logs requests served at once (429 beyond)")
	str("log-streams-per-client", strconv.Itoa(agent.DefaultLogStreamsPerClient), "most logs requests served at once to one client (remote IP, or uid on the socket)")
	str("http-max-conns", strconv.Itoa(agent.DefaultHTTPMaxConns), "most open HTTP API connections (never more than half the fd limit); more are closed at once")
	str("http-max-conns-per-client", strconv.Itoa(agent.DefaultHTTPMaxConnsPerClient), "most open HTTP API connections from one remote IP")
	str("http-idle-timeout", agent.DefaultHTTPIdleTimeout.String(), "close HTTP API connections idle this long")
	str("port-range", "20000-29999", "ports given to instances as $PORT")
	str("max-parallel", "64", "tickets executed at once")
	fs.Var(&o.allowRoot, "allow-root-instances", "start instances that would run as root (proc types without a user, or user root) (default: false; with -dev: true)")
	fs.BoolVar(&o.cfg.StopOnExit, "stop-on-exit", false, "stop every instance when the agent exits (default: leave them running)")
	str("stop-after-disconnect", "0s", "stop instances after etcd has been unreachable this long (0: never)")
	str("lost-grace", "30s", "reconciler: how long a host's lease must be gone before its instances are replaced")
	str("reconcile-interval", "30s", "reconciler: period of the full pass (it also acts on registry events)")
	fs.BoolVar(&o.cfg.EnablePprof, "enable-pprof", false, "serve Go's /debug/pprof profiles on the agent API (same access rules as the rest of it)")
	fs.BoolVar(&o.cfg.DisableReconciler, "no-reconciler", false, "never run the reconciler on this agent (it is elected among the others)")
	str("dns-addr", "", "serve DNS for service endpoints (SRV/A under visor.) on this address, e.g. 127.0.0.1:8600 (default off)")
	str("cgroups", "auto", "resource limits backend: auto, v2, v1 or none")
	artifactFlags(str)
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.BoolVar(&o.logJSON, "log-json", false, "log as JSON lines")
}

// parseAgentFlags parses the agent's arguments, environment and config
// file without side effects, and returns the resulting options or an error
// naming the offending flag or field.
func parseAgentFlags(args []string) (agentOptions, error) {
	var o agentOptions
	raw := map[string]*string{}
	fs := flag.NewFlagSet("visor agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	agentFlags(fs, &o, raw)
	if err := fs.Parse(args); err != nil {
		return o, usageError("agent: %v", err)
	}
	if fs.NArg() > 0 {
		return o, usageError("agent: unexpected argument %q", fs.Arg(0))
	}
	if err := o.globals.check(fs); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.configFile == "" {
		o.configFile = os.Getenv("VISOR_CONFIG")
	}
	file := map[string]string{}
	if o.configFile != "" {
		var err error
		if file, err = readAgentConfig(o.configFile, fs); err != nil {
			return o, err
		}
	}
	// Environment, then config file, for every flag not given explicitly.
	var ferr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || ferr != nil || f.Name == "config" {
			return
		}
		env := "VISOR_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				ferr = usageError("agent: %s: %v", env, err)
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := fs.Set(f.Name, v); err != nil {
				ferr = usageError("agent: config %s: %s: %v", o.configFile, strings.ReplaceAll(f.Name, "-", "_"), err)
			}
		}
	})
	if ferr != nil {
		return o, ferr
	}
	if err := o.fill(raw); err != nil {
		return o, err
	}
	if _, err := hclogLevel(o.logLevel); err != nil {
		return o, err
	}
	if err := o.cfg.Validate(); err != nil {
		return o, usageError("agent: %v", err)
	}
	return o, nil
}

// readAgentConfig reads the JSON config file; keys are flag names with
// underscores. Unknown keys are errors; keys starting with "_" are comments.
func readAgentConfig(path string, fs *flag.FlagSet) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError("agent: config: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, usageError("agent: config %s: not valid JSON: %v", path, err)
	}
	out := map[string]string{}
	for k, v := range m {
		if strings.HasPrefix(k, "_") {
			continue
		}
		name := strings.ReplaceAll(k, "_", "-")
		if fs.Lookup(name) == nil || name == "config" {
			return nil, usageError("agent: config %s: unknown field %q", path, k)
		}
		switch x := v.(type) {
		case string:
			out[name] = x
		case bool:
			out[name] = strconv.FormatBool(x)
		case float64:
			out[name] = strconv.FormatFloat(x, 'f', -1, 64)
		case map[string]any:
			var kv []string
			for lk, lv := range x {
				s, ok := lv.(string)
				if !ok {
					return nil, usageError("agent: config %s: %s.%s must be a string", path, k, lk)
				}
				kv = append(kv, lk+"="+s)
			}
			sort.Strings(kv)
			out[name] = strings.Join(kv, ",")
		default:
			return nil, usageError("agent: config %s: field %q has an unsupported type", path, k)
		}
	}
	return out, nil
}

// fill converts the string-typed flags into agent.Config.
func (o *agentOptions) fill(raw map[string]*string) error {
	c := &o.cfg
	get := func(n string) string { return strings.TrimSpace(*raw[n]) }
	var err error
	c.HostID = get("host")
	c.Addr = get("addr")
	if l := get("labels"); l != "" {
		c.Labels = map[string]string{}
		for _, kv := range strings.Split(l, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || k == "" {
				return usageError("agent: labels: %q is not k=v", kv)
			}
			c.Labels[k] = v
		}
	}
	switch capa := get("capacity"); capa {
	case "auto", "0":
		c.Capacity = 0
	case "unlimited", "-1":
		c.Capacity = -1
	default:
		if c.Capacity, err = strconv.Atoi(capa); err != nil || c.Capacity < 1 {
			return usageError("agent: capacity: %q is not auto, unlimited or a count above 0", capa)
		}
	}
	if c.InstanceMemory, err = parseMemory(get("instance-memory")); err != nil || c.InstanceMemory < 1<<20 {
		return usageError("agent: instance-memory: %q is not a size of at least 1M, such as 128M", get("instance-memory"))
	}
	if c.StartRate, err = strconv.ParseFloat(get("start-rate"), 64); err != nil || c.StartRate <= 0 || math.IsInf(c.StartRate, 0) || math.IsNaN(c.StartRate) {
		return usageError("agent: start-rate: %q is not a positive number of starts per second", get("start-rate"))
	}
	if c.StartBurst, err = strconv.Atoi(get("start-burst")); err != nil || c.StartBurst < 1 {
		return usageError("agent: start-burst: %q is not a count above 0", get("start-burst"))
	}
	if c.TTL, err = time.ParseDuration(get("ttl")); err != nil {
		return usageError("agent: ttl: %v", err)
	}
	c.DataDir = get("data-dir")
	c.RunDir = get("run-dir")
	switch h := get("http-addr"); {
	case h == "off", h == "" && !o.dev:
		c.DisableHTTP = true
	case h == "":
		c.HTTPAddr = "127.0.0.1:7777"
	default:
		c.HTTPAddr = h
	}
	c.Token = get("token")
	if f := get("token-file"); f != "" {
		if c.Tokens, err = agent.LoadTokenFile(f); err != nil {
			return usageError("agent: %v", err)
		}
	}
	c.SocketGroup = get("socket-group")
	if c.SocketGroupScopes, err = agent.ParseScopes(get("socket-group-scopes")); err != nil {
		return usageError("agent: socket-group-scopes: %v", err)
	}
	if c.SocketGroupScopes == nil {
		c.SocketGroupScopes = []agent.Scope{} // "": members get nothing
	}
	if o.dev && c.Token == "" && len(c.Tokens) == 0 && !c.DisableHTTP {
		// The agent logs a warning that its HTTP API is open.
		c.InsecureHTTP = true
	}
	c.TLSCertFile, c.TLSKeyFile = get("tls-cert"), get("tls-key")
	for _, f := range []struct {
		name string
		v    *int
	}{
		{"log-streams", &c.LogStreams},
		{"log-streams-per-client", &c.LogStreamsPerClient},
		{"http-max-conns", &c.HTTPMaxConns},
		{"http-max-conns-per-client", &c.HTTPMaxConnsPerClient},
	} {
		if *f.v, err = strconv.Atoi(get(f.name)); err != nil {
			return usageError("agent: %s: %q is not an integer", f.name, get(f.name))
		}
	}
	if c.HTTPIdleTimeout, err = time.ParseDuration(get("http-idle-timeout")); err != nil {
		return usageError("agent: http-idle-timeout: %v", err)
	}
	lo, hi, ok := strings.Cut(get("port-range"), "-")
	if c.PortMin, err = strconv.Atoi(lo); !ok || err != nil {
		return usageError("agent: port-range: %q is not MIN-MAX", get("port-range"))
	}
	if c.PortMax, err = strconv.Atoi(hi); err != nil {
		return usageError("agent: port-range: %q is not MIN-MAX", get("port-range"))
	}
	if c.MaxParallel, err = strconv.Atoi(get("max-parallel")); err != nil {
		return usageError("agent: max-parallel: %q is not an integer", get("max-parallel"))
	}
	if c.StopAfterDisconnect, err = time.ParseDuration(get("stop-after-disconnect")); err != nil {
		return usageError("agent: stop-after-disconnect: %v", err)
	}
	if c.LostGrace, err = time.ParseDuration(get("lost-grace")); err != nil {
		return usageError("agent: lost-grace: %v", err)
	}
	if c.ReconcileInterval, err = time.ParseDuration(get("reconcile-interval")); err != nil {
		return usageError("agent: reconcile-interval: %v", err)
	}
	// Least privilege by default (issue 14): a production agent refuses
	// instances that would run as root unless allowed; -dev allows them,
	// so a newcomer's first proc type (no user) runs.
	c.RefuseRootInstances = !o.dev
	if o.allowRoot.set {
		c.RefuseRootInstances = !o.allowRoot.val
	}
	c.DNSAddr = get("dns-addr")
	if err := fillArtifact(c, get); err != nil {
		return err
	}
	c.Cgroups = get("cgroups")
	c.Version = version.Version

	if c.DataDir == "" {
		if o.dev {
			// Placeholder for validation; runAgent makes the real temp dir.
			o.tempDataDir = true
			c.DataDir = filepath.Join(os.TempDir(), "visor-dev")
		} else {
			c.DataDir = "/var/lib/visor"
		}
	}
	if c.RunDir == "" {
		if o.dev {
			c.RunDir = filepath.Join(c.DataDir, "run")
		} else {
			c.RunDir = "/run/visor"
		}
	}
	return nil
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

// IsBoolFlag lets the flag be given without a value.
func (b *optBool) IsBoolFlag() bool { return true }

func hclogLevel(s string) (hclog.Level, error) {
	l := hclog.LevelFromString(s)
	if l == hclog.NoLevel {
		return l, usageError("agent: log-level: %q is not one of trace, debug, info, warn, error", s)
	}
	return l, nil
}

// runAgent is `visor agent`: embedded etcd (with -dev), the registry client
// and the agent, composed in a run group with a fixed teardown order.
func runAgent(ctx context.Context, e *env, args []string) error {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fs := flag.NewFlagSet("visor agent", flag.ContinueOnError)
			var o agentOptions
			agentFlags(fs, &o, map[string]*string{})
			fmt.Fprintf(e.stdout, "Usage: visor agent [flags]\n\nrun the host agent (with -dev: embedded etcd too)\n\nFlags:\n")
			fs.SetOutput(e.stdout)
			fs.PrintDefaults()
			return nil
		}
	}
	o, err := parseAgentFlags(args)
	if err != nil {
		return err
	}
	level, _ := hclogLevel(o.logLevel)
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "visor",
		Level:      level,
		Output:     e.stderr,
		JSONFormat: o.logJSON,
	})
	o.cfg.Logger = logger
	switch {
	case o.cfg.RefuseRootInstances:
		logger.Info("instances that would run as root are refused; -allow-root-instances allows them")
	case os.Geteuid() == 0:
		logger.Warn("instances may run as root: proc types without a user run as root", "dev", o.dev, "allow_root_instances", true)
	}

	if o.dev {
		if o.tempDataDir {
			dir, err := os.MkdirTemp("", "visor-dev-")
			if err != nil {
				return fmt.Errorf("dev data dir: %w", err)
			}
			o.cfg.DataDir = dir
			o.cfg.RunDir = filepath.Join(dir, "run")
		}
		etcdDir := o.devData
		if etcdDir == "" {
			etcdDir = filepath.Join(o.cfg.DataDir, "etcd")
		}
		srv, err := embedetcd.Start(ctx, embedetcd.Config{
			Dir:       etcdDir,
			ClientURL: o.devClient,
			PeerURL:   o.devPeer,
		})
		if err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		defer srv.Close()
		o.globals.endpoints = srv.Endpoint()
		logger.Info("dev mode: embedded etcd up", "endpoint", srv.Endpoint(), "data_dir", etcdDir)
		fmt.Fprintf(e.stderr, "\n  visor dev agent: etcd at %s, state in %s\n  in another shell: bin/visor app create demo; bin/visor --help\n\n", srv.Endpoint(), o.cfg.DataDir)
	}

	rcfg, err := o.globals.registryConfig(logger)
	if err != nil {
		return err
	}
	// Fail fast on a wrong endpoint at start-up, like etcdctl; later outages
	// are ridden out by the agent's session loop.
	dctx, cancel := context.WithTimeout(ctx, o.globals.timeout)
	reg, err := registry.Dial(dctx, rcfg)
	cancel()
	if err != nil {
		return fmt.Errorf("connect to registry at %s: %w", o.globals.endpoints, err)
	}
	defer reg.Close()

	o.cfg.Ready = func() {
		if err := systemd.NotifyReady(); err != nil {
			logger.Warn("sd_notify ready", "error", err)
		}
	}
	o.cfg.Stopping = func() {
		if err := systemd.NotifyStopping(); err != nil {
			logger.Warn("sd_notify stopping", "error", err)
		}
	}
	a, err := agent.New(o.cfg, reg)
	if err != nil {
		return err
	}

	var g oklogrun.Group
	actx, stopAgent := context.WithCancel(ctx)
	g.Add(func() error { return a.Run(actx) }, func(error) { stopAgent() })
	if err := g.Run(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	logger.Info("agent stopped")
	return nil
}

// artifactFlags declares the flags of the artifact fetch, unpack and cache
// bounds (agent.Config.Artifact*).
func artifactFlags(str func(name, def, usage string)) {
	str("artifact-connect-timeout", "30s", "artifact fetch: bound on connecting (TCP, TLS, until the response headers)")
	str("artifact-timeout", "10m", "artifact fetch: bound on one whole fetch and unpacking")
	str("artifact-max-bytes", "2GiB", "artifact fetch: largest artifact (bytes; KiB, MiB, GiB, TiB suffixes)")
	str("artifact-max-unpacked-bytes", "8GiB", "largest uncompressed tar stream of an artifact, skipped entries included")
	str("artifact-max-entries", "100000", "most entries of an artifact (directories its names imply included)")
	str("artifact-redirect-hosts", "", "hosts (name or name:port, comma-separated) artifact URLs may redirect to besides their own")
	str("artifact-fetch-parallel", "8", "artifact fetches (and unpackings) at once")
	str("artifact-cache-max-age", "168h", "remove cached artifacts and releases unused this long (never one an instance uses)")
	str("artifact-cache-max-bytes", "20GiB", "shrink the artifact cache, least recently used first, beyond this size")
}

// fillArtifact converts the artifact flags into c.
func fillArtifact(c *agent.Config, get func(string) string) error {
	var err error
	for _, d := range []struct {
		name string
		to   *time.Duration
	}{
		{"artifact-connect-timeout", &c.ArtifactConnectTimeout},
		{"artifact-timeout", &c.ArtifactTimeout},
		{"artifact-cache-max-age", &c.ArtifactCacheMaxAge},
	} {
		if *d.to, err = time.ParseDuration(get(d.name)); err != nil {
			return usageError("agent: %s: %v", d.name, err)
		}
	}
	for _, b := range []struct {
		name string
		to   *int64
	}{
		{"artifact-max-bytes", &c.ArtifactMaxBytes},
		{"artifact-max-unpacked-bytes", &c.ArtifactMaxUnpackedBytes},
		{"artifact-cache-max-bytes", &c.ArtifactCacheMaxBytes},
	} {
		if *b.to, err = parseBytes(get(b.name)); err != nil {
			return usageError("agent: %s: %v", b.name, err)
		}
	}
	if c.ArtifactMaxEntries, err = strconv.Atoi(get("artifact-max-entries")); err != nil {
		return usageError("agent: artifact-max-entries: %q is not an integer", get("artifact-max-entries"))
	}
	if c.ArtifactFetchParallel, err = strconv.Atoi(get("artifact-fetch-parallel")); err != nil {
		return usageError("agent: artifact-fetch-parallel: %q is not an integer", get("artifact-fetch-parallel"))
	}
	c.ArtifactRedirectHosts = nil
	for _, h := range strings.Split(get("artifact-redirect-hosts"), ",") {
		if h = strings.TrimSpace(h); h != "" {
			c.ArtifactRedirectHosts = append(c.ArtifactRedirectHosts, h)
		}
	}
	return nil
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
