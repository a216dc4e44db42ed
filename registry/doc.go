// Package registry is the typed Go client of the Visor registry in etcd:
// the model (apps, env, revisions, process types, scale, tickets, claims,
// instances, hosts), its key layout, claims bound to host leases, and
// watches that turn etcd changes into typed events. It is usable as a
// library on its own (Dial, then the methods of Registry).
//
// registry must not import os/exec or github.com/visorhq/visor/supervisor
// (enforced by internal/deptest); it knows nothing about running processes.
//
// # Key layout
//
// All keys live under a prefix (default "/visor/"). Values are JSON with
// snake_case fields unless noted; ModRevision fields come from etcd and are
// not stored.
//
//	apps/<app>                         App
//	apps/<app>/env/<KEY>               env var value (raw string, not JSON)
//	apps/<app>/revs/<rev>              Revision
//	apps/<app>/procs/<proc>            ProcType
//	apps/<app>/scale/<rev>/<proc>      desired count (decimal string)
//	gen/<app>/<rev>/<proc>             generation key: empty value, only its
//	                                   mod revision matters (see Scale)
//	gen/<app>/_config                  the app's configuration generation
//	                                   key, touched by every write of its
//	                                   process types or env (see Releases)
//	tickets/<id>                       Ticket; ids sort by creation time
//	claims/<ticket-id>                 holder host id (raw), bound to the
//	                                   holder's lease
//	instances/<id>                     Instance; ids are <app>-<proc>-<8 hex>,
//	                                   so Scale reads one key range per proc
//	hosts/<host>                       Host, bound to the host's lease
//	hosts/<host>/instances/<id>        empty index entry, bound to the lease
//	status/<app>/<rev>/<proc>          ScaleStatus: instances of a scale that
//	                                   wait for capacity, and why; absent
//	                                   when none waits
//	config/max_scale                   the fleet's bound on one scale
//	                                   (decimal; default DefaultMaxScale,
//	                                   10000)
//	deploying/<app>                    Deployment: the app's active one;
//	                                   absent when none is active
//	deploys/<app>/<id>                 Deployment: ended ones (history);
//	                                   ids sort by creation time
//
// Names of revisions and hosts match ^[a-z0-9][a-z0-9.-]*$ and are at
// most 63 characters. Names of apps and process types are DNS labels
// (^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$, no "."): a process type's
// service is "<app>.<proc>", and with dots two process types could share
// one (app "a.b" proc "web", app "a" proc "b.web"). Env keys match
// ^[A-Za-z_][A-Za-z0-9_]*$. Nothing user-supplied can contain "/", so no
// name escapes its key. Invalid input fails with ErrInvalid before anything
// is written.
//
// A registry written before the label rule may hold an app or process type
// whose name has a dot: its record is a BadRecord (`visor doctor` lists
// it) and starts of it fail naming the rule. Migrate by deleting it by
// its old name (UnregisterApp, RemoveProcType still accept the old names)
// and registering it again under a name without dots ("a.b" -> "a-b").
//
// # Records that do not decode
//
// Every stored record is read through one decoder per kind, which checks
// what it decodes as the writers check their input: names (which keys are
// built from), states and ops, env keys (never "=" or NUL), ports,
// counts. A value that fails is a BadRecord (key, kind, error; matches
// ErrCorrupt), never a value that breaks something later. A read of that
// one record fails with it; a listing (Apps, Instances, Hosts, Tickets,
// Scales, Env, Drains, Launch's env, ...) skips it and returns the records
// that did decode with a BadRecords error naming the skipped ones, which
// Skipped separates from real failures:
//
//	insts, err := r.Instances(ctx)
//	bad, err := registry.Skipped(err) // err: only what is not a bad record
//
// Check reads the whole prefix and returns every bad record (visor doctor).
//
// # Transactions
//
// Every multi-key change is one etcd transaction. Read-modify-write changes
// compare the mod revisions they read and retry on conflict (bounded, with
// ctx; ErrConflict when the budget is spent).
//
// A claim is one transaction and one round trip: the ticket's mod revision
// is the one the claimer read, claims/<id> does not exist, and for a start
// ticket the instance record is still the one written with the ticket (same
// revision); then the claim is put with the host's lease and, for a start
// ticket, the instance is written as claimed with its host index entry
// (also leased). The claim writes the record whole without reading it;
// the last compare makes sure it overwrites nothing but the pending record
// (the ticket carries the fields, such as Replaces, the claim copies). A
// start ticket whose instance was written after it (its earlier claim died
// with a lease) is claimed over the stored record in a second transaction
// that keeps what others wrote, or withdrawn if a stop was requested or a
// drain replaced the instance meanwhile. A host whose lease
// ends loses its claims, so the tickets are free for other hosts.
// ClaimBatch sends several such claim transactions nested in one request:
// one round trip for up to MaxClaimBatch tickets, each claimed or lost on
// its own.
//
// # Holder writes
//
// A HostSession remembers, per instance it holds, the record as it last
// wrote or read it (with its mod revision). UpdateInstance and CompleteWith
// build on that copy and compare its revision, so the usual state write is
// one transaction without a read first. A copy that is stale (the
// reconciler, a stop ticket or a drain wrote the record since) fails the
// compare, is forgotten, and the write reads the record and decides on it:
// what others wrote survives, and a lost instance stays lost. The host index
// entry is put again only when it is not on the session's lease (a nested
// transaction in the same request), so steady state updates do not touch
// hosts/.
//
// # Scale
//
// Scale writes apps/<app>/scale/<rev>/<proc> and, in the same transaction,
// start tickets, each with a new instance record in state pending (so an
// instance record exists from the moment it is wanted), or for scale-down
// deletions and stop tickets. The counted instances of app/rev/proc are the
// Live ones (pending, claimed, starting, running, backoff) without a stop
// ticket; pending start tickets are counted through their pending
// instances, never twice. Every write that changes whether an instance
// counts (Scale, a stop ticket, a state update to stopping or a terminal
// state, a final release, MarkLost, CompleteWith) also writes the
// generation key gen/<app>/<rev>/<proc>, and Scale's transaction compares
// both the scale key and the generation key with its snapshot, so
// concurrent scalers and agents make it retry and it never overshoots.
// Claims do not write the generation key (a claim does not change the
// count); a scale-down that cancels a start ticket compares that its claim
// is still absent.
//
// # Releases
//
// A revision is a draft until its first Scale (of any process type, to
// any count) or the creation of a deployment to it (CreateDeployment,
// Rollback; ReleaseRevision does the same alone). That transaction also
// rewrites the revision record with a Release: every process type of the
// app (the whole
// ProcType: command, env, restart policy, stop signal and timeout, min
// uptime, health check, limits, user and group) and the app's env vars, as
// read at one etcd revision. The transaction compares the revision record
// (still the draft read), the app's configuration key gen/<app>/_config
// (SetProcType, RemoveProcType, SetEnv and UnsetEnv touch it, so a
// deletion since the read is seen) and the process type and env key
// ranges (mod revisions not above the read's, for writers that do not
// touch the key); on a conflict the Scale reads again and retries, so a
// release is the app's configuration exactly as it was when the Scale
// landed, never a mix of before and after a change. A process type that
// does not decode makes the release fail naming it: a release has all the
// process types or none; env vars that do not check out are left out, as
// Launch always left them out of a process's env.
//
// From then on the revision is released and its Release never changes
// (RegisterRevision ignores a Release it is given; nothing else writes
// one). Launch reads the process type and env of a released revision from
// its release, and Scale, Rescale and ReplaceInstance take a ticket's
// Reserve from the release's limits, so `visor proc set` and `visor env
// set` change only revisions released later (a deployment's steps, too,
// take the process types of the revisions they scale from their
// releases, and plan on the target's). A configuration change ships
// by registering a new revision (RegisterRevisionFrom copies the artifact
// of an existing one) and scaling it. A Scale of a released revision for
// a process type its release lacks fails with ErrNotFound naming it ("it
// was released before worker was added; register a new revision"); a
// process type removed from the app stays in the releases that have it.
//
// Migration: a revision record written by a Visor older than releases has
// no Release and stays a draft: Launch starts its instances from the
// app's process types and env (the old behaviour), also when the
// reconciler's Rescale re-applies its scale (Rescale never releases), until
// an explicit Scale of it releases it with the app's configuration of
// then. `visor doctor` names the draft revisions that have live instances.
// A revision record that does not decode is scaled, as before, only down
// or by Rescale: it cannot be released.
//
// # Admission
//
// Each host advertises its capacity in its record: Capacity (slots; 0 =
// unlimited) and Resources (memory, CPU and pids its instances may
// reserve). A process type's Limits are what its instances reserve (and
// their cgroup limits); Scale copies them into each start ticket
// (Ticket.Reserve), so an agent decides before claiming whether the
// instance fits. Fleet (NewFleet, Registry.Fleet) sums the live hosts'
// slots that are not draining, the slots their live instances use and
// the instances still pending; per host, it also counts what is left of
// its memory and CPU after its instances' reservations (Instance.Reserve,
// copied from the start ticket by Scale, ReplaceInstance and the claim;
// nil reserves the host's HostResources.InstanceMemory), and Fits places
// the pending instances on that room.
//
// Scale writes start tickets only for the fleet's room (free slots not
// spoken for by pending instances, and no more than Fits finds memory and
// CPU for, so that no ticket waits unclaimed for want of them without a
// reason: "no host has memory: 2 hosts, 7680/8192 MiB reserved, the
// instance reserves 1024 MiB"); the rest of the count waits without
// a ticket, and the scale's ScaleStatus (status/<app>/<rev>/<proc>: desired,
// admitted, waiting, reason such as "no host has capacity: 3 hosts,
// 2997/3000 slots used") is put or deleted in the same transaction as the
// tickets, compared on its revision. The reconciler's RescaleIn admits
// more as slots free up, so a scale far above the fleet's capacity never
// writes more tickets than can run. With no live host at all, every
// ticket is written (nothing can be overloaded). Scale refuses a count
// above MaxScale (config/max_scale, default 10000) with ErrInvalid.
//
// Scale-down first cancels pending unclaimed start tickets, newest first,
// deleting the ticket and its pending instance. If more must go, it creates
// stop tickets (targeted at the instance's host) for instances that are not
// yet running (claimed, starting, backoff) before running ones, and within
// each group the most recently changed (Since) first: the youngest
// instances have the least warm state.
//
// A difference of up to 1000 tickets is one transaction when etcd accepts
// it (about 3 operations per ticket: the embedded etcd of `visor agent
// -dev` allows 4096 per transaction). An etcd that refuses it as too large
// (its default --max-txn-ops is 128) gets steps of at most 40 tickets per
// transaction, each step re-counting; the Registry keeps the smaller size.
//
// # Deployments
//
// A deployment moves an app's process types from the revisions they run
// to one revision, keeping each one's total count (DeployProc.Count),
// with a Strategy (defaults, then the process type's Update, then the
// request's override). CreateDeployment checks everything first (app,
// revision, process types, counts, strategy) and writes nothing on bad
// input. The active deployment is the one record deploying/<app>: "one
// active deployment per app" is the compare that the key is as read (absent
// unless DeployRequest.Force, which writes the replaced one to the
// history as cancelled in the same transaction). When a deployment ends
// (succeeded, failed, reverted, cancelled) its record moves to
// deploys/<app>/<id> in the transaction that ends it.
//
// The elected reconciler drives active deployments (package agent). Each
// of its steps is one DeployStep transaction that compares the active
// key's mod revision as the driver read it and, for every scale it
// changes, the count it planned from, the scale and generation keys and
// the instance records, as Scale does, then writes the new record
// (state, progress) with the scale keys and their tickets. A second or
// restarted leader, or a step planned before an operator's action
// (DeploymentAction: pause, resume, promote, fail) or a Scale, is refused
// whole with ErrStale and plans again from a new read: no step is ever
// taken twice. Scale itself compares the active key too, and a Scale of
// the revision a deployment moves a process type to changes that
// deployment's Count instead of the scale key (ScaleResult.Deployment),
// so the driver moves the instances there max-parallel at a time.
//
// A failure (the driver's, or DeploymentAction fail) moves the record to
// reverting when a process type has AutoRevert or canaries not promoted:
// its targets become the counts it moved from (DeployProc.From,
// NewBefore), driven the same rolling way, and it ends reverted (or
// failed, when the revert fails). Without, it ends failed where it is.
// Rollback is a new deployment back to a named or the previous revision
// that replaces an active one. A forced UnregisterApp cancels the active
// deployment first; UnregisterApp deletes the history with the app.
//
// # Instance states
//
// pending → claimed → starting → running ⇄ backoff → stopping → exited,
// and the terminal failed and lost (ValidTransition). Only the holder (the
// host named by the instance) changes an instance
// (HostSession.UpdateInstance), except lost, which the reconciler sets
// with MarkLost. A claim goes back in two ways: a released start ticket
// (Release, Unclaim) puts its claimed instance back to pending with no
// host, in the transaction that deletes the claim on the releasing
// session's lease; and a start whose holder died (its lease and index
// entry gone) is claimed over by another host, claimed or starting →
// claimed. The holder never writes pending itself.
//
// # Connection errors
//
// Dial refuses an http:// endpoint when TLS is configured (the etcd client
// would connect without TLS there). When etcd does not answer within the
// dial timeout, Dial probes each endpoint with a TLS handshake and names
// the cause (ExplainTLS: unknown authority, certificate not valid for the
// dialled name, client certificate refused, TLS served but not configured)
// instead of the client's bare "context deadline exceeded". Refusals for
// lack of permission or failed authentication wrap ErrPermission: not an
// outage, so callers stop instead of retrying (issue 14 row 10).
package registry
