// Package test holds Visor's end-to-end tests and benchmarks. They build
// the real `visor` binary once, start a real embedded etcd
// (internal/etcdtest), run agents as subprocesses with their own state
// dirs, and assert through etcd and the OS process table.
//
// The workloads are this package's test binary re-executed as "sleep" (the
// helper-process pattern of internal/proctest). Every process a test starts
// carries VISOR_E2E=<run id> in its environment, so the process table can be
// searched for them and cleanup can kill any left behind.
package test
