// Package fault is Visor's fault-injection suite (issue 5). It runs a real
// three-member etcd cluster (each member a separate OS process: this test
// binary in its etcd helper mode) and real `visor agent` binaries, each
// agent in a network namespace of its own on a bridge the suite creates,
// and injects faults: kill -9 of the reconciler leader agent and of another
// agent, kill of the etcd leader member, partitions of one agent shorter
// and longer than the lost-host grace, a 60 s outage of all of etcd, and a
// restart of every agent at once. Every scenario asserts, from the OS
// process table and the registry, that the desired scale is reached again,
// that no instance runs twice once settled, that no instance was stopped
// without need, that no ticket is lost and that every instance state
// transition was legal; it reports its figures as JSON (t.Log, and the file
// named by VISOR_FAULT_REPORT if set). VISOR_FAULT_LOGDIR keeps the agents'
// and etcd members' logs in a directory of your choice.
//
// The suite needs root and the `ip` command; without them it skips with a
// message. Addresses come from a documentation range (203.0.113.0/24, else
// 198.51.100.0/24) that is first checked to be neither assigned nor routed
// on the machine. The namespaces have no default route, and nothing is
// forwarded or translated: no packet leaves the bridge and namespaces the
// suite made. Everything it creates is removed at the end, also on failure,
// and leftovers of earlier runs whose test process is gone are removed
// before it starts.
//
// Only tests live here. It imports registry, internal/proctest and the etcd
// modules; it never imports agent or supervisor (it drives the binary).
package fault
