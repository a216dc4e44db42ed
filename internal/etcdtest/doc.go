// Package etcdtest starts a real, embedded etcd member for tests, on free
// loopback ports with its data in t.TempDir(). There is no mock of etcd in
// Visor: every registry and agent test talks to one of these.
//
// Only tests import this package.
package etcdtest
