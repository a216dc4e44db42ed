// Package e2etest holds what Visor's end-to-end suites (test/ and
// test/fault/) share: building the real visor binary once per test binary,
// and finding a run's workload processes in the OS process table by the
// VISOR_E2E=<run id> tag their environment carries (the agent adds
// VISOR_INSTANCE=<id>).
//
// Only tests import this package.
package e2etest
