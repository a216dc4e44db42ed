// Package netnstest is the network plumbing the root-only harnesses
// (test/fault, test/vm) share: named network namespaces made with `ip
// netns`, a bridge with addresses from the test range inside one of them,
// sockets opened from inside a namespace by a process that stays in the
// root namespace, and the removal of a run's namespaces and of every
// process in them.
//
// Nothing here touches the root network namespace: every `ip` command a
// harness runs through it names its namespace (ip -n), and the test range
// (Net, 198.51.100.0/24, RFC 5737 TEST-NET-2) is used only inside the
// harness's namespaces, so it cannot shadow anything the machine reaches.
//
// A run's namespaces are named by a prefix of the harness, the test
// process's pid and a suffix ("vsrf1234-hub"), so that the leftovers of a
// run whose process is gone can be found by name (DeadRuns) and removed
// (RemoveNamespaces), from the next run or from internal/janitor.
//
// Only tests and test harnesses import this package; it needs root and
// the ip command (iproute2), which Require checks.
package netnstest
