// Package restart holds the pure restart and backoff decisions of the
// supervisor: given how a process ended, when it started and the current
// time, a Tracker says whether to restart it, after which delay, under which
// reason, or that the restart budget is spent. It starts no goroutines and
// reads no clock, so table tests drive it with an injected now (cf. Nomad's
// client/allocrunner/taskrunner/restarts).
//
// The delays are the module's one exponential backoff with jitter,
// internal/backoff. Besides that it imports only the standard library; it
// must never import go.etcd.io/..., the registry, the agent or the
// supervisor package itself.
package restart
