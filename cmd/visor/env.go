package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/registry"
)

// globals are the flags every command accepts. Defaults come from the
// environment (VISOR_ENDPOINTS, VISOR_PREFIX, ...), flags override them.
type globals struct {
	endpoints string
	prefix    string
	caFile    string
	certFile  string
	keyFile   string
	username  string
	password  string
	output    string
	timeout   time.Duration
	// defaulted reports that the defaults were filled in. bind does it
	// once: every level of the command tree binds the flags again, and a
	// value parsed at one level ("visor -o json app list") must survive.
	defaulted bool
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

// bind declares the global flags on fs. Called for every command so that
// global flags may appear before or after the subcommand's name.
func (g *globals) bind(fs *flag.FlagSet) {
	if fs.Lookup("endpoints") != nil {
		return
	}
	if !g.defaulted {
		g.defaulted = true
		g.endpoints = envOr("VISOR_ENDPOINTS", "127.0.0.1:2379")
		g.prefix = envOr("VISOR_PREFIX", "/visor/")
		g.caFile = envOr("VISOR_CA_FILE", "")
		g.certFile = envOr("VISOR_CERT_FILE", "")
		g.keyFile = envOr("VISOR_KEY_FILE", "")
		g.username = envOr("VISOR_USERNAME", "")
		g.password = envOr("VISOR_PASSWORD", "")
		g.output = envOr("VISOR_OUTPUT", "table")
		g.timeout = 10 * time.Second
	}
	fs.StringVar(&g.endpoints, "endpoints", g.endpoints, "comma-separated etcd endpoints (env VISOR_ENDPOINTS)")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "registry key prefix in etcd (env VISOR_PREFIX)")
	fs.StringVar(&g.caFile, "ca-file", g.caFile, "CA bundle to verify etcd's TLS certificate (env VISOR_CA_FILE)")
	fs.StringVar(&g.certFile, "cert-file", g.certFile, "client TLS certificate for etcd (env VISOR_CERT_FILE)")
	fs.StringVar(&g.keyFile, "key-file", g.keyFile, "client TLS key for etcd (env VISOR_KEY_FILE)")
	fs.StringVar(&g.username, "username", g.username, "etcd user (env VISOR_USERNAME)")
	fs.StringVar(&g.password, "password", g.password, "etcd password (env VISOR_PASSWORD)")
	fs.StringVar(&g.output, "o", g.output, "output format: table or json (env VISOR_OUTPUT)")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "how long to wait for etcd on connect")
}

// check reports a usage error for a global flag given on fs with a value no
// command can use. Called after fs is parsed, at every level of the tree.
func (g *globals) check(fs *flag.FlagSet) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "endpoints" && len(g.endpointList()) == 0 {
			err = usageError("--endpoints is empty")
		}
	})
	return err
}

// endpointList splits the endpoints flag, dropping empty entries.
func (g *globals) endpointList() []string {
	var out []string
	for _, s := range strings.Split(g.endpoints, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// tlsConfig builds the client TLS configuration, or nil when no TLS flag is set.
func (g *globals) tlsConfig() (*tls.Config, error) {
	if g.caFile == "" && g.certFile == "" && g.keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if g.caFile != "" {
		pem, err := os.ReadFile(g.caFile)
		if err != nil {
			return nil, fmt.Errorf("ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca-file %s: no PEM certificates", g.caFile)
		}
		cfg.RootCAs = pool
	}
	if (g.certFile == "") != (g.keyFile == "") {
		return nil, usageError("cert-file and key-file go together")
	}
	if g.certFile != "" {
		cert, err := tls.LoadX509KeyPair(g.certFile, g.keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// registryConfig returns the registry.Config the global flags describe.
func (g *globals) registryConfig(logger hclog.Logger) (registry.Config, error) {
	eps := g.endpointList()
	if len(eps) == 0 {
		return registry.Config{}, usageError("--endpoints is empty")
	}
	tc, err := g.tlsConfig()
	if err != nil {
		return registry.Config{}, err
	}
	if err := registry.CheckEndpoints(eps, tc != nil); err != nil {
		return registry.Config{}, asUsage(err)
	}
	return registry.Config{
		Endpoints:   eps,
		TLS:         tc,
		Username:    g.username,
		Password:    g.password,
		Prefix:      g.prefix,
		DialTimeout: g.timeout,
		Logger:      logger,
	}, nil
}

// env is what a command runs with: its streams and the global flags.
type env struct {
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
	globals globals
	// flags is the leaf command's parsed flag set, set just before Run, so
	// that Run reads its own flags without package-level variables (which
	// would be shared by concurrent run calls in tests).
	flags *flag.FlagSet
}

// registry dials the registry named by the global flags. The caller closes it.
func (e *env) registry(ctx context.Context) (*registry.Registry, error) {
	cfg, err := e.globals.registryConfig(hclog.NewNullLogger())
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, e.globals.timeout)
	defer cancel()
	r, err := registry.Dial(dctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to registry at %s: %w", e.globals.endpoints, err)
	}
	return r, nil
}

// jsonOutput reports whether -o json was asked for; any other value than
// "table" or "json" is a usage error.
func (e *env) jsonOutput() (bool, error) {
	switch e.globals.output {
	case "json":
		return true, nil
	case "table", "":
		return false, nil
	default:
		return false, usageError("-o must be table or json, not %q", e.globals.output)
	}
}

// print writes v as indented JSON with -o json, or calls table with a
// tabwriter otherwise.
func (e *env) print(v any, table func(w io.Writer)) error {
	asJSON, err := e.jsonOutput()
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}
