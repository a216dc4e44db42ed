// Command visor is the Visor CLI and host agent in one binary.
//
// `visor agent` runs the per-host daemon; every other subcommand talks to the
// registry (etcd) directly, or to an agent's local API. main stays thin: it
// parses flags, builds the root logger and calls into the packages.
//
// Subcommands (see `visor --help`): agent (the per-host daemon; -dev runs
// an embedded etcd too), app, env, rev, proc, scale, ps, restart, stop,
// tickets, hosts, events, drain, undrain, logs, signal, lookup, service,
// version. Registry commands talk to etcd directly through package
// registry (restart and stop write tickets the instance's agent carries
// out); logs and signal call the instance's agent.
package main
