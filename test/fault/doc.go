// Package fault is Visor's fault-injection suite (issue 5). It runs a real
// three-member etcd cluster (each member a separate OS process: this test
// binary in its etcd helper mode) and real `visor agent` binaries, each
// agent in a network namespace of its own, and injects faults: kill -9 of
// the reconciler leader agent and of another agent, kill of the etcd
// leader member, partitions of one agent shorter and longer than the
// lost-host grace, a 60 s outage of all of etcd, and a restart of every
// agent at once. Every scenario asserts, from the OS process table and the
// registry, that the desired scale is reached again, that no instance runs
// twice once settled, that no instance was stopped without need, that no
// ticket is lost and that every instance state transition was legal; it
// reports its figures as JSON (t.Log, and the file named by
// VISOR_FAULT_REPORT if set). VISOR_FAULT_LOGDIR keeps the agents' and
// etcd members' logs in a directory of your choice.
//
// The suite needs root and the `ip` command; without them it skips with a
// message.
//
// # Network
//
// Nothing is added to the root network namespace: no link, address or
// route. A hub namespace (vsrf<pid>-hub) holds the bridge br0 with the
// etcd members' addresses 198.51.100.1-3; each agent host has a namespace
// (vsrf<pid>-h1, ...) with eth0 at 198.51.100.11, .12, ..., the peer of a
// veth whose other end is on the bridge in the hub. Every address is from
// 198.51.100.0/24 (RFC 5737), used only inside these namespaces; the
// namespaces have no default route and nothing is forwarded, so no packet
// leaves them. A partition sets a host's veth down in the hub.
//
// The etcd members run in the hub and the agents (with their workloads) in
// their host namespaces, each started by `ip netns exec`. The test process
// itself stays in the root namespace and reaches the members through its
// etcd client, whose dialer creates each socket inside the hub: a
// goroutine locked to its OS thread enters the hub with setns, connects,
// and returns the thread to its own namespace before unlocking (a socket
// keeps the namespace it was made in). This was chosen over a helper
// process in the hub because the suite's checks need the registry client,
// watches and the process table in the test process; only socket creation
// needs the hub. TestFaultInjection checks, with everything up, that the
// root namespace's links, addresses and routes are as they were before.
//
// # Cleanup
//
// Everything the suite starts dies with it, also when the test binary is
// killed or times out (Go's timeout panic runs no cleanup):
//   - the test process arms a parent-death SIGKILL, so kill -9 of go test
//     ends it too;
//   - agents and etcd members get SIGKILL when the test process dies
//     (Pdeathsig; `ip netns exec` execs them, which keeps it);
//   - workloads, which agents deliberately leave running when they die,
//     and the namespaces are removed by the run's janitor: this test
//     binary in janitor mode, started in a session of its own before the
//     first namespace exists. It reads a pipe whose only write end the
//     test holds; on EOF (teardown, or the test's death) it kills every
//     process in the run's namespaces until none is left, deletes the
//     namespaces (their links go with them) and exits;
//   - at start, the namespaces of earlier runs whose test process is gone
//     (named vsrf<pid>-*) are removed the same way.
//
// The suite stops waiting a minute (scaled) before go test -timeout and
// fails with that reason, then tears down in order: agents, members, the
// registry client, the network. Every wait is bounded: waits are scaled by
// VISOR_TEST_TIMEOUT_SCALE, and each check inside a wait gets a context
// that ends with it. TestKilledHarnessLeavesNothing runs the harness as a
// subprocess, kills it with SIGKILL once agents, members, workloads,
// namespaces and links are up, and asserts that none of them is left
// within 10 s (scaled).
//
// Only tests live here. It imports registry, internal/proctest and the etcd
// modules; it never imports agent or supervisor (it drives the binary).
package fault
