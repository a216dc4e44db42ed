// Package embedetcd runs a single-member etcd server inside the current
// process. It backs `visor agent -dev` and the test harness in
// internal/etcdtest, so that neither a newcomer nor the test suite needs an
// etcd binary installed.
//
// It imports go.etcd.io/etcd/server/v3/embed and nothing of Visor's own.
package embedetcd
