// Package etcdtest starts a real, embedded etcd member for tests, on free
// loopback ports with its data in t.TempDir(). There is no mock of etcd in
// Visor: every registry and agent test talks to one of these.
//
// New starts a member per test. Shared starts one member per test binary,
// at first use, for the tests that need only keys of their own (under their
// own Prefix); the package's TestMain wraps m with WithShared, which stops
// it after the tests.
//
// Only tests import this package.
package etcdtest
