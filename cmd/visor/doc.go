// Command visor is the Visor CLI and host agent in one binary.
//
// `visor agent` runs the per-host daemon; every other subcommand talks to the
// registry (etcd) directly, or to an agent's local API. main stays thin: it
// parses flags, builds the root logger and calls into the packages.
//
// The command tree is built with github.com/spf13/cobra, afresh for each
// invocation (newRootCmd; commands bind their flags into it), one file per
// area: agent, app, env, rev, proc, scale, deploy (deploy status|pause|
// resume|fail|promote, deploys, rollback: deploy*.go; env set --rollout:
// envrollout.go), ps, restart, stop, ticket
// (tickets), host (hosts, drain, undrain), status, events, logs, signal,
// lookup, config, doctor, service, version, demo-web (the quickstart's
// workload: a small HTTP server), plus cobra's help and completion.
// Registry commands talk to etcd directly through package registry (restart
// and stop write tickets the instance's agent carries out); logs and signal
// call the instance's agent.
//
// Flags: the global ones (root's persistent flags, env.go) apply to every
// command; each flag's default is written once, where it is declared, and
// flagsrc.go layers the environment (VISOR_*) and, for the agent, the JSON
// config file under the command line. normalizeArgs keeps the single-dash
// spelling of Go's flag package ("-endpoints", "-dev") working.
//
// Exit codes (main.go): 0 ok, 1 error, 2 usage, 3 a --wait timed out.
package main
