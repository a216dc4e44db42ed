// Package discovery is Visor's service registry: endpoints of services
// stored in etcd, looked up by name and semver range, watched as an ordered
// stream of register/free events, and served over HTTP and DNS.
//
// # Model
//
// An Endpoint is one address of a service. Keys live under
// prefix+"services/<name>/<id>", one JSON value per endpoint. Two sources
// write them:
//
//   - "instance": the agent registers every running instance of an app's
//     process type as service "<app>.<proc>", version "<rev>", with the
//     host's lease (Store.Put). A dead host's lease takes its endpoints with
//     it; the agent deletes them when an instance stops (Store.Delete).
//   - "external": processes Visor does not run register through an agent's
//     HTTP API (NewHandler) or the Go Client. The agent's Registrar puts them
//     with the same host lease and tracks their TTLs in memory: a renewal
//     (heartbeat) costs no etcd write, a missed TTL deletes the key, and if
//     the agent dies its lease removes every registration it held.
//
// # Versions
//
// Lookup accepts a version or range: "" (any), an exact version "1.2.3",
// "1.2" (any 1.2.x), ranges "^1.2", "~1.2", ">=1.0 <2", "1.x", and "||"
// alternatives (github.com/Masterminds/semver/v3 syntax). An endpoint
// matches when its version equals the query string, or when both parse as
// semver and the version satisfies the range. Versions that are not semver
// (revision names like "a1b2c3d") therefore match only exactly.
// Pre-releases match only ranges that name a pre-release.
//
// # Watch
//
// Store.Watch streams events in etcd revision order from a given revision;
// the HTTP watch endpoint (server-sent events) uses "<revision>-<index>" as
// the event id so a client resuming with Last-Event-ID loses nothing, even
// when one revision (a revoked lease) frees many endpoints at once.
//
// # DNS
//
// DNSServer answers SRV, A and AAAA questions for healthy endpoints: the
// service "<app>.<proc>" is the name "<proc>.<app>.visor." (labels of the
// service name in reverse order under the domain). SRV targets are
// "<hex-ip>.addr.visor." names that the server also answers. Against
// reflection with forged sources, UDP answers are rate limited per source
// (DefaultDNSRate, DefaultDNSBurst; over the limit nothing, or every second
// time an empty truncated reply) and never larger than MaxUDPSize bytes
// (truncated with TC beyond; TCP carries the whole answer).
//
// # Access and limits
//
// The HTTP handler (HandlerConfig.Handler) does not authenticate: the
// caller's middleware does and names the principal with WithCaller.
// Request headers never name a client. An external registration belongs
// to the caller that made it: only it or an Admin caller may renew or free
// it (ErrForbidden, 403), and RegistrarConfig.MaxPerClient caps each
// caller separately (ErrLimit, 429). HandlerConfig.Reserved refuses names
// that are not for outsiders (ErrReserved, 403); the agent reserves the
// names of its apps. Watch streams are capped per caller (429) and in
// total (503): DefaultMaxWatchesPerCaller, DefaultMaxWatches.
//
// # Imports
//
// discovery depends on etcd's client, never on os/exec, supervisor, agent or
// registry; the agent wires it in. Only tests import internal/etcdtest.
package discovery
