// Package janitor cleans up after a test harness however the harness dies.
//
// A harness that creates things outliving its processes (network
// namespaces, bridges, VMs, overlay disks) starts a janitor: a copy of the
// test binary, in a session of its own and with no parent-death signal,
// whose stdin is a pipe only the harness writes to. The janitor reads until
// EOF, which comes when the harness closes the pipe at teardown or when the
// harness process dies, however it dies (kill -9, a timeout panic, a
// crash): the kernel closes the pipe either way. Then it runs the harness's
// removal function for the run and exits. test/fault and test/vm use it.
package janitor
