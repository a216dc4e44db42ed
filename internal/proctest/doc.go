// Package proctest is the helper-process harness of the supervisor tests:
// the test binary re-executes itself as a workload ("sleep", "exit N",
// "crash-after D", "tick D", "ignore-sigterm", "spawn-grandchild", "spawn-escapee", "print-lines N",
// "alloc MB", "listen-port", "crash-seq"), in the manner of the standard
// library's exec_test.go and Nomad's testtask.
//
// A test package calls Main first thing in its TestMain; Command and Env
// build the argv and environment that make the binary act as a workload.
// Only tests import this package. It imports only the standard library.
package proctest
