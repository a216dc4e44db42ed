package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hashicorp/go-hclog"
	oklogrun "github.com/oklog/run"
	"github.com/spf13/cobra"

	"github.com/visorhq/visor/agent"
	"github.com/visorhq/visor/internal/embedetcd"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/systemd"
)

func newAgentCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent [flags]",
		Short: "run the host agent (with --dev: embedded etcd too)",
		Long: `Every flag can also come from the environment as VISOR_<FLAG> (dashes as
underscores, e.g. VISOR_DATA_DIR) or from the JSON config file given by
--config (keys are flag names with underscores, e.g. "data_dir"; labels may be
an object). Precedence: flag, then environment, then config file, then the
default shown here. Flags may be spelled with one dash (-data-dir), as
installed service units do.`,
		// The agent parses its own flags: it layers the environment and the
		// config file under them, and accepts the single-dash spelling.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				if a == "-h" || a == "-help" || a == "--help" {
					return cmd.Help()
				}
			}
			return runAgent(cmd.Context(), e, args)
		},
	}
	// Declared for help and completion only; runAgent parses its own set.
	var o agentOptions
	cmd.Flags().SortFlags = false
	agentFlags(cmd.Flags(), &o)
	return cmd
}

// runAgent is `visor agent`: embedded etcd (with --dev), the registry client
// and the agent, composed in a run group with a fixed teardown order.
func runAgent(ctx context.Context, e *env, args []string) error {
	o, err := parseAgentFlags(args)
	if err != nil {
		return err
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "visor",
		Level:      o.logLevel,
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
		stop, err := startDevEtcd(ctx, e, &o, logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	reg, err := dialAgentRegistry(ctx, &o.globals, logger)
	if err != nil {
		return err
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

// startDevEtcd starts the embedded etcd of --dev (with a fresh temporary
// data dir if none was given) and points o's endpoints at it. The caller
// calls stop once the agent is done: it stops etcd and removes the
// temporary data dir.
func startDevEtcd(ctx context.Context, e *env, o *agentOptions, logger hclog.Logger) (stop func(), err error) {
	// The temporary data dir (etcd's ~60 MB of WAL among it) goes with the
	// agent: nothing else knows the registry in it, and its instances were
	// stopped (-dev implies -stop-on-exit).
	removeTemp := func() {}
	if o.tempDataDir {
		dir, err := os.MkdirTemp("", "visor-dev-")
		if err != nil {
			return nil, fmt.Errorf("dev data dir: %w", err)
		}
		o.cfg.DataDir = dir
		o.cfg.RunDir = filepath.Join(dir, "run")
		removeTemp = func() {
			if err := os.RemoveAll(dir); err != nil {
				logger.Warn("dev mode: could not remove the temporary data dir", "dir", dir, "error", err)
				return
			}
			logger.Info("dev mode: removed the temporary data dir", "dir", dir)
		}
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
		removeTemp()
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("dev: %w (is another `visor agent -dev` or an etcd running here? Stop it, or give this one other addresses: -dev-client-url, -dev-peer-url, -http-addr)", err)
		}
		return nil, fmt.Errorf("dev: %w", err)
	}
	o.globals.endpoints = srv.Endpoint()
	logger.Info("dev mode: embedded etcd up", "endpoint", srv.Endpoint(), "data_dir", etcdDir)
	fmt.Fprintf(e.stderr, "\n  visor dev agent: etcd at %s, state in %s\n  in another shell: bin/visor app create demo; bin/visor --help\n\n", srv.Endpoint(), o.cfg.DataDir)
	return func() {
		srv.Close()
		removeTemp()
	}, nil
}

// dialAgentRegistry connects to the registry g names. It fails fast on a
// wrong endpoint at start-up, like etcdctl; later outages are ridden out by
// the agent's session loop.
func dialAgentRegistry(ctx context.Context, g *globals, logger hclog.Logger) (*registry.Registry, error) {
	rcfg, err := g.registryConfig(logger)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	reg, err := registry.Dial(dctx, rcfg)
	if err != nil {
		return nil, fmt.Errorf("connect to registry at %s: %w", g.endpoints, err)
	}
	return reg, nil
}
