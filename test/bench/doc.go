// Command bench measures Visor end to end on this machine and prints JSON.
//
// It starts an embedded etcd, builds (or takes with -visor) the visor
// binary, runs -agents agents as subprocesses, and for each N in -n scales
// an app of /bin/sleep processes from 0 to N, measuring:
//
//   - seconds until all N run (registry state running with a live pid);
//   - p50/p99 ticket-to-running latency (ticket creation to the instance's
//     running write);
//   - etcd writes per instance started (etcd revision delta / N);
//   - for the largest N: agent RSS and CPU while the instances idle, the
//     etcd writes an idle fleet makes, and crash-to-running latency
//     (SIGKILL an instance, time until it runs again);
//   - the floor: a bare os/exec loop starting the same N /bin/sleep
//     processes, measured in the same run.
//
// All loops are bounded in count and time; everything it starts is stopped
// at the end. Usage: go run ./test/bench -n 100,1000 -agents 3
package main
