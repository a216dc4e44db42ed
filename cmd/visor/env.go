package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"

	"github.com/visorhq/visor/registry"
)

// globals are the flags every command accepts (root's persistent flags).
// Their defaults are declared once, in bind; the environment (VISOR_*)
// overrides a default, a flag given on the command line overrides both.
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
}

// bind declares the global flags on fs.
func (g *globals) bind(fs *pflag.FlagSet) {
	fs.StringVar(&g.endpoints, "endpoints", "127.0.0.1:2379", "comma-separated etcd endpoints")
	fs.StringVar(&g.prefix, "prefix", "/visor/", "registry key prefix in etcd")
	fs.StringVar(&g.caFile, "ca-file", "", "CA bundle to verify etcd's TLS certificate")
	fs.StringVar(&g.certFile, "cert-file", "", "client TLS certificate for etcd")
	fs.StringVar(&g.keyFile, "key-file", "", "client TLS key for etcd")
	fs.StringVar(&g.username, "username", "", "etcd user")
	fs.StringVar(&g.password, "password", "", "etcd password")
	fs.StringVarP(&g.output, "output", "o", "text", "output format of commands that print data: text or json")
	fs.DurationVar(&g.timeout, "timeout", 10*time.Second, "how long to wait for etcd: the connect, then a command's requests (not --watch, --follow or --wait)")
	for _, name := range []string{"endpoints", "prefix", "ca-file", "cert-file", "key-file", "username", "password", "output", "timeout"} {
		envVar(fs, name, envName(name))
	}
}

// resolve fills the flags of fs that the command line left unset from
// their environment variables, then checks the global flags' values.
// Called once the command line is parsed.
func (g *globals) resolve(fs *pflag.FlagSet) error {
	if err := applySources(fs, nil); err != nil {
		return err
	}
	return g.check(fs)
}

// check reports a usage error for a global flag given on the command line
// with a value no command can use.
func (g *globals) check(fs *pflag.FlagSet) error {
	if f := fs.Lookup("endpoints"); f != nil && f.Changed && len(g.endpointList()) == 0 {
		return usageError("--endpoints is empty")
	}
	return nil
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
	// flags is the running command's parsed flag set (its own and the
	// global ones), set just before it runs.
	flags *pflag.FlagSet
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
	if errors.Is(err, registry.ErrUnreachable) {
		return nil, fmt.Errorf("connect to registry at %s (is etcd, or `visor agent -dev`, running there?): %w", e.globals.endpoints, err)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to registry at %s: %w", e.globals.endpoints, err)
	}
	return r, nil
}

// requestContext bounds a command's registry work by --timeout, as
// etcdctl's --command-timeout bounds its requests: the etcd client waits
// for a lost etcd to come back, so without a bound a command whose etcd
// went away after the connect hung until interrupted. A command that
// follows (--watch, --follow) or waits (--wait) is not bounded by it: it
// runs until interrupted, or until its --wait-timeout.
func (e *env) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	for _, name := range []string{"watch", "follow", "wait"} {
		if f := e.flags.Lookup(name); f != nil && f.Value.String() == "true" {
			return context.WithCancel(ctx)
		}
	}
	return context.WithTimeout(ctx, e.globals.timeout)
}

// jsonOutput reports whether --output json was asked for; any other value
// than text or json ("table", its old name, is text) is a usage error.
func (e *env) jsonOutput() (bool, error) {
	switch e.globals.output {
	case "json":
		return true, nil
	case "text", "table", "":
		return false, nil
	default:
		return false, usageError("--output/-o must be text or json, not %q", e.globals.output)
	}
}

// print writes v as indented JSON with -o json, or calls table with a
// tabwriter for -o text.
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
