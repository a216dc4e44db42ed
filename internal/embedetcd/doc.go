// Package embedetcd runs a single-member etcd server inside the current
// process. It backs `visor agent -dev` and the test harness in
// internal/etcdtest, so that neither a newcomer nor the test suite needs an
// etcd binary installed.
//
// Member and RunMember run one member of a static multi-member cluster in
// a helper process until it is signalled: the etcd members of the fault
// and VM suites (test/fault, test/vm), which kill and restart them one by
// one.
//
// It imports go.etcd.io/etcd/server/v3/embed and nothing of Visor's own.
package embedetcd
