// Package supervisor turns a Spec into a running OS process and keeps it the
// way the Spec asks: each instance is its own process group (and cgroup when
// the host offers one), restarted with exponential backoff by its restart
// policy, stopped with a signal to the whole group, a grace period and
// SIGKILL, its stdout and stderr written to rotated log files.
//
// A Spec's Shell line is classified by package shellline, the one shell
// parser the agent and the supervisor share: a simple command of literal
// words is exec'd directly; one program whose words need the shell runs as
// /bin/sh -c "exec LINE"; anything else runs under /bin/sh -c (bash -c for
// bash syntax or builtins). The program such a line names is looked up at
// Start, so a missing one is an ErrInvalidSpec naming it, not a crash loop.
//
// An instance runs with the credentials of Spec.User (its primary group or
// Spec.Group, and the user's supplementary groups; a Group without a User
// is refused), and so do its exec health checks. Config.RefuseRoot refuses
// Specs that would run as uid 0 (ErrRoot). A health check is of one
// CheckType (exec, tcp, http), each probed by its own prober (probe.go).
// A failing check shows in Status.Health (the last probe's error) and
// Status.HealthFailures; the StateHandler hears of a change of Health in a
// Status of the same State, once per change of the message (the agent
// writes it into the instance record), not once per probe. An instance
// whose check never passes stays starting; it is killed and restarted only
// once running (FailureThreshold consecutive failures).
//
// Children are reaped centrally: one poller goroutine waits on the pidfds of
// all instances through epoll (kqueue EVFILT_PROC on darwin), so supervising
// a thousand processes costs one OS thread, not a thousand blocked cmd.Wait
// calls. Instances outlive the
// supervisor: their state is persisted in an append-only journal under
// Config.StateDir (one line per change, compacted now and then), and Restore re-adopts them (pid plus process start time, so a reused pid is
// never mistaken for ours) without starting a second copy.
//
// Linux is the production platform (pidfds, cgroups); darwin builds and
// runs with kqueue and process groups only. The package knows nothing of the registry: it must never
// import go.etcd.io/..., github.com/visorhq/visor/registry or
// github.com/visorhq/visor/agent (enforced by internal/deptest). The agent
// implements StateHandler and translates Status into registry records.
package supervisor
