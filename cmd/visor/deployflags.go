package main

import (
	"fmt"
	"os"
	"os/user"

	"github.com/spf13/pflag"

	"github.com/visorhq/visor/registry"
)

// strategyFlags declares the flags of a rollout strategy (Nomad's update
// stanza) on fs: `visor deploy` takes them as a per-deploy override,
// `visor proc set` as the process type's own strategy. Counts and
// durations are read as text and checked by registry.ParseStrategy, the
// one place that says what a value means.
func strategyFlags(fs *pflag.FlagSet) {
	fs.String("max-parallel", "", "new instances started (and old ones stopped) at once, at least 1 (default 1)")
	fs.String("min-healthy", "", "how long a new instance must be running and healthy to count, e.g. 10s; 0 counts it at once (default 10s)")
	fs.String("healthy-deadline", "", "a new instance not healthy within this fails the deployment (default 5m)")
	fs.String("progress-deadline", "", "the deployment fails when it makes no progress within this (default 10m)")
	fs.String("canary", "", "start this many new instances beside the old ones, then wait for 'visor deploy promote' (default 0)")
	fs.Bool("auto-revert", false, "when the deployment fails, roll back to the revisions it replaced")
	fs.Bool("auto-promote", false, "promote the canaries once they are healthy for --min-healthy")
}

// strategyFromFlags returns the strategy fields given on the command line
// (nil if none was), or a usage error naming the flag whose value does
// not parse or means nothing (a count below 1, a negative duration, a
// zero deadline).
func strategyFromFlags(e *env) (*registry.Strategy, error) {
	vals := map[string]string{}
	for _, name := range registry.StrategyFields {
		if flagIsSet(e, name) {
			vals[name] = e.flags.Lookup(name).Value.String()
		}
	}
	if len(vals) == 0 {
		return nil, nil
	}
	s, err := registry.ParseStrategy(vals)
	if err != nil {
		return nil, asUsage(fmt.Errorf("strategy: %w", err))
	}
	return &s, nil
}

// parseMoreProcFlags is parseProcFlags for the limits, user, group and
// env (parseLimitAndUserFlags), and the strategy (strategyEdit).
func parseMoreProcFlags(e *env) ([]procEdit, error) {
	edits, err := parseLimitAndUserFlags(e)
	if err != nil {
		return nil, err
	}
	update, err := strategyEdit(e)
	return append(edits, update...), err
}

// strategyEdit returns the edit of a process type's strategy (Update)
// that the strategy flags given to "proc set" ask for: each given field
// is set, the others keep their values; the result must be valid as a
// whole (a healthy deadline above min-healthy, etc.). None when no
// strategy flag was given.
func strategyEdit(e *env) ([]procEdit, error) {
	given, err := strategyFromFlags(e)
	if err != nil || given == nil {
		return nil, err
	}
	return []procEdit{func(p *registry.ProcType) error {
		var u registry.Strategy
		if p.Update != nil {
			u = *p.Update
		}
		for _, name := range registry.StrategyFields {
			if flagIsSet(e, name) {
				setStrategyField(&u, *given, name)
			}
		}
		if err := u.Valid(); err != nil {
			return asUsage(fmt.Errorf("set proc type %s/%s: strategy: %w", p.App, p.Name, err))
		}
		p.Update = &u
		return nil
	}}, nil
}

// setStrategyField copies field name (a StrategyFields name) from src.
func setStrategyField(dst *registry.Strategy, src registry.Strategy, name string) {
	switch name {
	case "max-parallel":
		dst.MaxParallel = src.MaxParallel
	case "min-healthy":
		dst.MinHealthy = src.MinHealthy
	case "healthy-deadline":
		dst.HealthyDeadline = src.HealthyDeadline
	case "progress-deadline":
		dst.ProgressDeadline = src.ProgressDeadline
	case "canary":
		dst.Canary = src.Canary
	case "auto-revert":
		dst.AutoRevert = src.AutoRevert
	case "auto-promote":
		dst.AutoPromote = src.AutoPromote
	}
}

// newUpdateOut is a process type's strategy with the defaults filled in
// (nil when it has none of its own).
func newUpdateOut(s *registry.Strategy) *strategyOut {
	if s == nil {
		return nil
	}
	o := newStrategyOut(s.WithDefaults())
	return &o
}

// operator names who runs the CLI, as deployments record it: user@host.
func operator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	return name
}
