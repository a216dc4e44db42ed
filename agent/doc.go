// Package agent is Visor's per-host daemon. It wires the registry (etcd)
// to the supervisor (OS processes):
//
//   - it registers the host under one etcd lease (TTL, keepalive at TTL/3)
//     that also binds the host's claims and instance index;
//   - it watches the tickets this host may claim and claims them
//     atomically: every agent ranks the live hosts for a ticket by weighted
//     rendezvous hashing (weights from their reported load), the first
//     claims at once and the others only as backups (placement.go); claimed
//     tickets are executed (start, stop, restart, signal) through the
//     supervisor by a bounded pool (pipeline.go, execute.go);
//   - it turns a start ticket into a supervisor.Spec: the proc type's
//     command (or the artifact's Procfile line) goes to the supervisor as
//     a shell line, classified there by package supervisor/shellline, so
//     the agent and the supervisor cannot disagree on what a line means;
//   - with Config.RefuseRootInstances (`visor agent`'s default outside
//     -dev) it refuses to start an instance that would run as root: the
//     supervisor returns supervisor.ErrRoot and the ticket is released with
//     a reason naming the fix (a user, or -allow-root-instances);
//   - it admits only what the host can run (capacity.go, as Nomad's
//     resources do it): the host's slots (-capacity, by default what its
//     memory and pid limit allow: memory / -instance-memory, 128 MiB, or
//     pids / 32, after a tenth is kept for the system) and the memory and
//     CPU each instance reserves (its process type's limits, which are
//     also its cgroup limits). A start ticket that does not fit is not
//     claimed; it waits in the registry for a host with room, and the
//     host record advertises Capacity and Resources so that Scale, the
//     reconciler and the CLI write and admit no more than the fleet can
//     take;
//   - it starts instances no faster than -start-rate per second (token
//     bucket, default 50/s, burst 50), so a burst of starts cannot starve
//     its own lease keepalive; stop, restart and signal tickets have their
//     own executors and never wait behind starts, so scale down, stop and
//     drain complete under overload;
//   - it writes each instance's state transitions back, coalescing bursts so
//     that an instance start costs at most four etcd writes;
//   - it survives etcd outages: processes keep running, the latest state of
//     each instance is kept in memory, and on reconnect the agent
//     re-registers, re-binds (adopts) its instances and stops only those
//     that were replaced meanwhile;
//   - it serves a local API on a unix socket and on HTTP (status,
//     instances, logs, signals, deployments (deployapi.go: status, history,
//     pause/resume/fail/promote, rollback, read from and written to the
//     registry, so any agent answers for the fleet), Prometheus metrics
//     (the elected one adds deployments by state and running instances per
//     revision, deploymetrics.go), health), with bounds on
//     every wait and buffer (apibounds.go): header, read, write and idle
//     timeouts (streaming routes get a deadline per write instead of one
//     for the response), a header size limit, a connection cap in total
//     and per remote IP that closes excess connections at accept (so idle
//     connections cannot take the descriptors instances need; issue 14 row
//     9), and logs streamed from the files (logfile.Options.Stream) with
//     concurrent streams capped in total and per client (429 beyond; a
//     stream ends with its client; issue 14 row 4). The host record
//     carries the API's scheme (https with TLS) so CLIs never send a token
//     in cleartext to a TLS agent;
//   - it authenticates every API request (auth.go; issue 14 row 2): on the
//     unix socket (0660, owner the agent's user, group Config.SocketGroup)
//     by the peer's credentials (SO_PEERCRED: root and the agent's user are
//     operators, group members get Config.SocketGroupScopes), over HTTP by
//     bearer tokens (Config.Tokens, LoadTokenFile: a name and scopes read,
//     logs, register, operator; only SHA-256 hashes kept, compared in
//     constant time). Unauthenticated requests are refused before any
//     handler or limit; Validate refuses an HTTP listener without tokens
//     unless Config.InsecureHTTP (loopback only). The principal is handed
//     to discovery (discovery.WithCaller), which counts and owns external
//     registrations per principal; names of Visor apps are reserved;
//   - it stops, rather than retrying, when etcd refuses it for lack of
//     permission (registry.ErrPermission: a read-only role is not an
//     outage); a port probe that fails for lack of descriptors is reported
//     as ErrNoDescriptors, not as a port shortage; a port range that
//     overlaps the kernel's ephemeral ports (ip_local_port_range) is
//     logged as a warning at start, since a connection may take a port
//     there and an instance restarted on it cannot bind;
//   - it fetches revision artifacts into a cache and unpacks them into
//     release directories (fetch.go, fetchguard.go, artifact.go,
//     release.go): every fetch bounded in time (connect, total and stall
//     timeouts) and size, link-local targets (cloud metadata) refused
//     unless allowed, redirects kept to the URL's scheme and host unless
//     allowed, file:// sources only
//     regular files; unpacking contained in the release and bounded in
//     bytes and entries. A start waiting for an artifact holds no ticket
//     executor (pipeline.go, execLoop) and is cancelled by its instance's
//     stop, its ticket's deletion or shutdown; the fetch ends when no start
//     waits for it. A release for an instance running as a non-root user
//     is unpacked as root, then handed to root and the instance's group
//     (read-only); root's releases are 0700. The cache is pruned by age and
//     size, never removing a release an instance uses.
//
// # Parts
//
// The Agent (agent.go) builds the parts and wires them; each gets the
// narrow interface or the few values it needs, declared where it is used,
// so that each can be tested alone: admission (admission.go, capacity.go:
// the capacity bookkeeping), the port allocator (ports.go), the state
// writer (writer.go, writerdeps.go), the ticket pipeline (pipeline.go,
// placement.go) and what executes its tickets (execute.go: the executor,
// with the session, supervisor, registry read, writer flush and starter it
// needs as small interfaces; start.go: the starter, which turns a start
// ticket into a supervisor.Spec), the session loop (session.go;
// sessionstate.go: the current session the parts share across sessions,
// and the lease kept in DataDir for a restart), the host record and its
// periodic status writes (status.go: hostStatus, with its session write
// and load sources as small interfaces), adoption (adopt.go: the adopter,
// with the supervisor, writer, registry reads and session writes it needs
// as small interfaces), the ticket watch (ticketwatch.go), the local API
// (api.go: listeners and routes; apihandlers.go: the status, instance,
// logs and signal handlers on a localAPI of the supervisor and a few
// values; deployapi.go: the deployment routes, on the five registry calls
// they make; ui.go: the dashboard's view of this host's instances, on the
// three supervisor calls it needs) and the reconciler (reconcile*.go),
// which also drives deployments (deploy.go, whose comment describes the
// rollout: each pass plans every active deployment's next step purely from
// the registry and writes it as one registry.DeployStep transaction
// compared on the deployment record, so a killed, restarted or second
// leader continues it and never doubles a step). Adoption, the API
// handlers, the deployment routes, the dashboard's view of this host, the
// pipeline, the executor, the host status, the session state, the writer
// and the reconciler's plan have unit tests that start no etcd.
//
// # Shutdown order
//
// Run runs the parts as one errgroup of actors. When its context ends (or
// a service fails: a DNS server that cannot listen, the supervisor), it
// stops them in this order, so that nothing claimed is lost and every
// step is bounded (ShutdownTimeout in all, even with etcd unreachable):
//
//  1. the session loop: the ticket watch stops, no more claims; claimed
//     tickets no executor started are released, starts under way are
//     cancelled (their releases share drainTimeout); the reconciler
//     resigns;
//  2. the artifact fetches, cancelled with their starts, clean up;
//  3. the final work begins, under one deadline (finalTimeout): the local
//     API stops accepting and its requests get apiShutdownTimeout; with
//     Config.StopOnExit every instance stops;
//  4. the instances' last states are written (state writer flush);
//  5. the session ends: closed with Config.StopOnExit, else left to
//     expire, so that a restarted agent takes it over;
//  6. the stops of replaced instances under way (a background group) get
//     until the final deadline, then are cut off: the supervisor goes on
//     stopping while it runs, and a copy left running is found again and
//     stopped by the next agent's adoption;
//  7. the services: state writer, service registrar, DNS, artifact cache
//     pruning, the dashboard's history (package ui) and the supervisor;
//     Run returns once they have exited.
//
// The agent imports registry and supervisor; neither of them imports agent.
// Instances outlive the agent: shutdown leaves them running unless
// Config.StopOnExit is set, and the next agent re-adopts them.
package agent
