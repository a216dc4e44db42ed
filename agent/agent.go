package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// Meta keys the agent stores with each supervised instance, so that a
// re-adopted process can be written back to the registry without reading it.
const (
	metaApp     = "app"
	metaRev     = "rev"
	metaProc    = "proc"
	metaPort    = "port"
	metaTicket  = "ticket"
	metaCreated = "created"
	// metaDir is the instance's working directory (its release): the
	// artifact cache never prunes a release an instance has.
	metaDir = "dir"
)

// Agent is one host's daemon. Create it with New and call Run.
type Agent struct {
	cfg       Config
	log       hclog.Logger
	reg       *registry.Registry
	sup       *supervisor.Supervisor
	ports     *portAllocator
	artifacts *artifactCache
	writer    *stateWriter
	metrics   *metrics
	peers     atomic.Pointer[[]registry.Host] // live hosts, for claim ranks
	// claimLatency is a recent claim round trip in nanoseconds (see
	// noteClaimLatency).
	claimLatency   atomic.Int64
	claimsInFlight atomic.Int64 // claim transactions sent, not yet answered
	services       *discovery.Store
	registrar      *discovery.Registrar
	auth           *authenticator // API principals; set by listen
	started        time.Time

	// capacity is the slot count in force (Config.Capacity or computed;
	// 0 = unlimited), resources what instances may reserve of the host,
	// instanceMemory the default memory reservation (0 when Capacity is
	// explicit: then only declared memory counts). Set by New.
	capacity       int
	resources      registry.HostResources
	instanceMemory int64
	startLimit     *rate.Limiter // Config.StartRate

	// bg owns goroutines spawned outside the main loops (stopping replaced
	// instances); Run waits for them before it returns. Once Run waits
	// (bgClosed, under bgMu), spawn starts nothing more: a WaitGroup may
	// not grow from zero while it is waited on.
	bg       sync.WaitGroup
	bgMu     sync.Mutex
	bgClosed bool

	mu        sync.Mutex // guards the fields below
	session   *registry.HostSession
	sessionCh chan struct{} // closed and replaced whenever session changes
	inflight  map[string]struct{}
	live      map[string]reservation // non-terminal instances supervised here
	// reserved holds the instances of start tickets being claimed or
	// started here that the supervisor has not reported yet; with live
	// they count against the capacity and resources (see capacity.go).
	reserved map[string]reservation
	waiting  map[string]context.CancelFunc // tickets waiting out the claim delay
	starts   map[string]*startRun          // instance -> its start under way here
	roomCh   chan struct{}                 // see noteRoom
	skipped  map[string]registry.Ticket    // see skip
	httpAddr string
	// draining is set while the registry says this host is being drained:
	// no start tickets are claimed then.
	draining  atomic.Bool
	readyOnce sync.Once
	// disconnectedSince is when the agent last lost its registry session;
	// zero while connected.
	disconnectedSince time.Time
}

var _ supervisor.StateHandler = (*Agent)(nil)

// New validates cfg and builds an agent on reg. It creates the data
// directories and the supervisor but starts nothing; call Run.
func New(cfg Config, reg *registry.Registry) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	cfg = cfg.withDefaults()
	for _, d := range []string{cfg.DataDir, cfg.RunDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	log := cfg.Logger.Named("agent").With("host", cfg.HostID)
	a := &Agent{
		cfg:       cfg,
		log:       log,
		reg:       reg,
		ports:     newPortAllocator(cfg.PortMin, cfg.PortMax),
		artifacts: newArtifactCache(filepath.Join(cfg.DataDir, "artifacts"), artifactLimitsOf(cfg), log.Named("artifacts")),
		started:   time.Now(),
		sessionCh: make(chan struct{}),
		inflight:  make(map[string]struct{}),
		live:      make(map[string]reservation),
		reserved:  make(map[string]reservation),
		waiting:   make(map[string]context.CancelFunc),
		starts:    make(map[string]*startRun),
		roomCh:    make(chan struct{}, 1),
		skipped:   make(map[string]registry.Ticket),
	}
	if err := a.artifacts.prepareDirs(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.resources = hostResources(readHostFacts())
	switch {
	case cfg.Capacity > 0:
		a.capacity = cfg.Capacity
		log.Info("host capacity", "slots", a.capacity, "by", "-capacity", "memory_bytes", a.resources.MemoryBytes, "cpu_millis", a.resources.CPUMillis)
	case cfg.Capacity < 0:
		log.Warn("host capacity unlimited (-capacity -1): one large scale can overload this host")
	default:
		var by string
		a.instanceMemory = cfg.InstanceMemory
		a.capacity, by = defaultCapacity(a.resources, cfg.InstanceMemory, DefaultInstancePids)
		log.Info("host capacity", "slots", a.capacity, "by", by, "memory_bytes", a.resources.MemoryBytes,
			"pids", a.resources.Pids, "cpu_millis", a.resources.CPUMillis, "instance_memory", cfg.InstanceMemory)
	}
	a.startLimit = rate.NewLimiter(rate.Limit(cfg.StartRate), cfg.StartBurst)
	a.metrics = newMetrics(a)
	a.writer = newStateWriter(a)
	a.services = discovery.NewStore(reg.Client(), reg.Prefix(), cfg.Logger)
	a.registrar = discovery.NewRegistrar(a.services, 0, discovery.RegistrarConfig{
		Host:   cfg.HostID,
		Logger: cfg.Logger,
	})
	sup, err := supervisor.New(supervisor.Config{
		StateDir: filepath.Join(cfg.DataDir, "instances"),
		LogDir:   filepath.Join(cfg.DataDir, "logs"),
		Logger:   cfg.Logger,
		Handler:  a,
		Cgroups:  cfg.Cgroups,
		// A process that died while the agent was down is restarted only
		// once the registry says the instance is still ours (adoptAll).
		HoldRestored: true,
		RefuseRoot:   cfg.RefuseRootInstances,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.sup = sup
	return a, nil
}

// InstanceStateChanged implements supervisor.StateHandler: it records the
// latest status for the state writer. It never blocks. The stop phase of a
// manual restart (Status.Restarting) is not recorded: in the registry the
// instance goes from running to running again with a new pid, never
// through a stop, which is final there and would have the reconciler
// replace an instance that is about to run again. A terminal state gives
// the instance's port back (see notePort).
func (a *Agent) InstanceStateChanged(id string, st supervisor.Status) {
	if st.Restarting {
		return
	}
	a.notePort(id, st)
	a.noteState(id, st)
	a.writer.update(id, st)
}

// notePort keeps the port allocator in step with the supervisor: an
// instance that reached a terminal state (exited or failed: stopped, given
// up by its restart policy, stopped as replaced or at shutdown) will not
// restart by itself, so its port is freed; an instance that runs again
// after that (a manual restart of a terminal instance) takes its port back
// unless another instance holds it by now. The stop phase of a manual
// restart never gets here (see InstanceStateChanged), so a restarting
// instance keeps its port.
func (a *Agent) notePort(id string, st supervisor.Status) {
	p, err := strconv.Atoi(st.Meta[metaPort])
	if err != nil {
		return
	}
	if st.State.Terminal() {
		a.ports.Free(p, id)
		return
	}
	if !a.ports.Reserve(p, id) {
		a.log.Warn("instance runs again on a port given to another instance meanwhile", "instance", id, "port", p)
	}
}

// HTTPAddr returns the address the HTTP API listens on ("" before Run has
// opened it, or when HTTP is disabled).
func (a *Agent) HTTPAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.httpAddr
}

// Supervisor returns the agent's supervisor (for the local API and tests).
func (a *Agent) Supervisor() *supervisor.Supervisor { return a.sup }

// ShutdownTimeout bounds the agent's own work once Run's context ends:
// releasing the tickets it had claimed shares drainTimeout, then the final
// state writes (and, with Config.StopOnExit, stopping the instances) take at
// most finalTimeout. Run returns about ShutdownTimeout after ctx ends at
// the latest, even with etcd unreachable; a service manager should allow
// more than that between SIGTERM and SIGKILL (the unit's TimeoutStopSec is
// 30 s).
const ShutdownTimeout = drainTimeout + finalTimeout

const (
	drainTimeout = 2 * time.Second
	finalTimeout = 4 * time.Second
)

// Run runs the agent until ctx ends: supervisor, local API, registry
// session, ticket loop and state writer. On return every goroutine it
// started has exited. Instances keep running unless Config.StopOnExit.
// A cancelled ctx is a clean shutdown (nil error).
func (a *Agent) Run(ctx context.Context) error {
	// The supervisor and the state writer outlive ctx a little: shutdown
	// stops claiming first, then flushes states, then stops them.
	bg, cancelBG := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBG()
	var wg sync.WaitGroup
	defer wg.Wait()

	supErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		supErr <- a.sup.Run(bg)
	}()

	restored, err := a.sup.Restore(ctx)
	if err != nil {
		cancelBG()
		return fmt.Errorf("agent: restore instances: %w", err)
	}
	for _, st := range restored {
		// A terminal instance holds no port: its process is gone and
		// nothing restarts it by itself.
		if p, err := strconv.Atoi(st.Meta[metaPort]); err == nil && !st.State.Terminal() {
			a.ports.Reserve(p, st.ID)
		}
		a.noteState(st.ID, st)
		a.writer.update(st.ID, st)
	}
	a.log.Info("agent starting", "restored_instances", len(restored), "cgroups", a.sup.CgroupMode())

	api, err := a.listen()
	if err != nil {
		cancelBG()
		return err
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		api.serve(bg)
	}()
	go func() {
		defer wg.Done()
		a.writer.run(bg)
	}()
	go func() {
		defer wg.Done()
		if err := a.registrar.Run(bg); err != nil {
			a.log.Error("service registrar stopped", "error", err)
		}
	}()
	dnsErr := make(chan error, 1)
	if a.cfg.DNSAddr != "" {
		d := &discovery.DNSServer{Addr: a.cfg.DNSAddr, Store: a.services, Logger: a.cfg.Logger}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dnsErr <- d.Run(bg)
		}()
	}

	loopCtx, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	wg.Add(1)
	go func() {
		// A DNS server that cannot listen is a start-up error, not a
		// degraded mode: stop the agent.
		defer wg.Done()
		select {
		case err := <-dnsErr:
			if err != nil {
				a.log.Error("dns server stopped", "addr", a.cfg.DNSAddr, "error", err)
				dnsErr <- err
				stopLoop()
			}
		case <-bg.Done():
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.pruneLoop(bg)
	}()
	loopErr := a.sessionLoop(loopCtx)
	// Every start waiting for an artifact has given up by now, which
	// cancelled the fetches: wait for them to clean up.
	a.artifacts.wait()
	select {
	case err := <-dnsErr:
		if err != nil {
			loopErr = errors.Join(loopErr, fmt.Errorf("agent: dns: %w", err))
		}
	default:
	}

	a.cfg.Stopping()
	a.log.Info("agent shutting down", "stop_instances", a.cfg.StopOnExit)
	// Bounded final work (see ShutdownTimeout).
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalTimeout)
	defer cancel()
	if a.cfg.StopOnExit {
		a.stopAll(fctx, "agent shutdown")
	}
	a.writer.flush(fctx)
	if s := a.currentSession(); s != nil {
		if a.cfg.StopOnExit {
			// Nothing runs here any more: leave the fleet at once.
			_ = s.Close(fctx)
		} else {
			// Let the lease run out by itself: a restarted agent takes it
			// over, and if none comes, the reconciler sees the host leave.
			s.Orphan()
		}
	}
	a.bgMu.Lock()
	a.bgClosed = true
	a.bgMu.Unlock()
	a.bg.Wait()
	cancelBG()
	wg.Wait()
	if err := <-supErr; err != nil && !errors.Is(err, context.Canceled) {
		return errors.Join(loopErr, fmt.Errorf("agent: supervisor: %w", err))
	}
	return loopErr
}

// spawn runs f in a goroutine that Run waits for; during Run's final wait
// and after it, f is dropped (a replaced instance left running is found
// again by the next run's adoption).
func (a *Agent) spawn(f func()) {
	a.bgMu.Lock()
	defer a.bgMu.Unlock()
	if a.bgClosed {
		return
	}
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		f()
	}()
}

// sessionLoop keeps a registry session up until ctx ends: register, adopt,
// serve tickets; on lease loss start over with a new lease.
func (a *Agent) sessionLoop(ctx context.Context) error {
	retry := newBackoff(200*time.Millisecond, 5*time.Second)
	for {
		s, err := a.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, registry.ErrPermission) {
				// Not an outage: a read-only role stays read-only.
				return fmt.Errorf("agent: cannot register host %s: %w", a.cfg.HostID, err)
			}
			a.noteDisconnected(ctx)
			a.log.Warn("registry unreachable; instances keep running", "error", err)
			if !retry.wait(ctx) {
				return nil
			}
			continue
		}
		retry.reset()
		a.log.Info("registry session up", "lease", fmt.Sprintf("%x", int64(s.Lease())))
		// Adopt before the state writer sees the session: a write of an
		// instance not yet re-bound to the new lease would look replaced.
		a.adoptAll(ctx, s)
		a.setSession(s)
		a.registrar.SetLease(s.Lease())
		a.syncEndpoints(ctx, s)
		a.readyOnce.Do(a.cfg.Ready)

		err = a.serve(ctx, s)
		if ctx.Err() != nil {
			return nil // Run flushes states with this session, then ends it
		}
		s.Orphan()
		a.setSession(nil)
		a.metrics.leaseLost.Inc()
		a.log.Warn("registry session lost; instances keep running", "error", err)
	}
}

// register creates the host session. If the host key is still held by the
// lease this agent persisted before it stopped (a restart inside the TTL),
// that lease is revoked first: it is ours, and the instances it indexed are
// adopted again under the new lease.
func (a *Agent) register(ctx context.Context) (*registry.HostSession, error) {
	host := a.hostRecord()
	s, err := a.reg.RegisterHost(ctx, host, a.cfg.TTL)
	if errors.Is(err, registry.ErrExists) {
		old, ok := a.persistedLease()
		h, herr := a.reg.Host(ctx, a.cfg.HostID)
		if herr != nil || !ok || h.Lease != old {
			return nil, fmt.Errorf("host %q is registered by another live agent (lease %x): %w", a.cfg.HostID, h.Lease, err)
		}
		a.log.Info("revoking this host's previous lease", "lease", fmt.Sprintf("%x", old))
		if _, rerr := a.reg.Client().Revoke(ctx, clientv3.LeaseID(old)); rerr != nil {
			return nil, fmt.Errorf("revoke previous lease: %w", rerr)
		}
		s, err = a.reg.RegisterHost(ctx, host, a.cfg.TTL)
	}
	if err != nil {
		return nil, err
	}
	a.persistLease(int64(s.Lease()))
	return s, nil
}

func (a *Agent) leaseFile() string { return filepath.Join(a.cfg.DataDir, "lease") }

func (a *Agent) persistLease(id int64) {
	tmp := a.leaseFile() + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(id, 16)), 0o640); err == nil {
		_ = os.Rename(tmp, a.leaseFile())
	}
}

func (a *Agent) persistedLease() (int64, bool) {
	b, err := os.ReadFile(a.leaseFile())
	if err != nil {
		return 0, false
	}
	id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64)
	return id, err == nil
}

func (a *Agent) hostRecord() registry.Host {
	return registry.Host{
		ID:        a.cfg.HostID,
		Addr:      a.cfg.Addr,
		Labels:    a.cfg.Labels,
		Capacity:  a.capacity,
		Resources: &a.resources,
		Version:   a.cfg.Version,
		APIAddr:   a.apiAddr(),
		APIScheme: a.apiScheme(),
		Started:   a.started,
		Load:      a.hostLoad(),
	}
}

// apiAddr is the HTTP API address other hosts' CLIs can call: the bound
// address, with an unspecified IP replaced by the host's Addr.
func (a *Agent) apiAddr() string {
	addr := a.HTTPAddr()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort(a.cfg.Addr, port)
	}
	return addr
}

func (a *Agent) setSession(s *registry.HostSession) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.session = s
	if s != nil {
		a.disconnectedSince = time.Time{}
	} else if a.disconnectedSince.IsZero() {
		a.disconnectedSince = time.Now()
	}
	close(a.sessionCh)
	a.sessionCh = make(chan struct{})
	a.metrics.setConnected(s != nil)
}

// currentSession returns the live session (nil while disconnected) and a
// channel closed when it changes.
func (a *Agent) currentSession() *registry.HostSession {
	s, _ := a.sessionAndChange()
	return s
}

func (a *Agent) sessionAndChange() (*registry.HostSession, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.session, a.sessionCh
}

// noteDisconnected applies StopAfterDisconnect.
func (a *Agent) noteDisconnected(ctx context.Context) {
	a.mu.Lock()
	if a.disconnectedSince.IsZero() {
		a.disconnectedSince = time.Now()
	}
	since := a.disconnectedSince
	a.mu.Unlock()
	if a.cfg.StopAfterDisconnect > 0 && time.Since(since) > a.cfg.StopAfterDisconnect {
		live := 0
		for _, st := range a.sup.List() {
			if !st.State.Terminal() {
				live++
			}
		}
		if live > 0 {
			a.log.Warn("registry unreachable past stop_after_disconnect; stopping instances", "after", a.cfg.StopAfterDisconnect, "instances", live)
			a.stopAll(ctx, "registry unreachable past stop_after_disconnect")
		}
	}
}

// stopAll stops every live instance in parallel, bounded by ctx.
func (a *Agent) stopAll(ctx context.Context, reason string) {
	var wg sync.WaitGroup
	for _, st := range a.sup.List() {
		if st.State.Terminal() {
			continue
		}
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			if _, err := a.sup.Stop(ctx, id); err != nil && !errors.Is(err, supervisor.ErrNotFound) {
				a.log.Warn("stop instance", "instance", id, "reason", reason, "error", err)
			}
		}(st.ID)
	}
	wg.Wait()
}

// adoptAll re-binds every local instance to session s. Instances the
// registry gave to another host (or marked lost) while this agent was away
// are stopped here: they were replaced. Registry instances of this host
// with no local process are written back as exited.
func (a *Agent) adoptAll(ctx context.Context, s *registry.HostSession) {
	list := a.sup.List()
	local := make(map[string]bool, len(list))
	// Each adoption is two or three round trips; a host with hundreds of
	// instances does them adoptParallel at a time, not one after another.
	var wg sync.WaitGroup
	slots := make(chan struct{}, adoptParallel)
	for _, st := range list {
		local[st.ID] = true
		if st.State.Terminal() {
			a.writer.touch(st.ID)
			continue
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			a.adoptOne(ctx, s, st)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}

	insts, err := a.reg.HostInstances(ctx, a.cfg.HostID)
	// Bad instance records are the reconciler's to report (it lists
	// them all on every pass); this read happens once per session.
	bad, err := registry.Skipped(err)
	if len(bad) > 0 {
		a.log.Debug("host instances: skipped records that do not decode", "count", len(bad))
	}
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("list host instances", "error", err)
		}
		return
	}
	for _, in := range insts {
		if local[in.ID] || in.State.Terminal() || in.State == registry.InstanceClaimed || in.State == registry.InstancePending {
			continue
		}
		in.State = registry.InstanceExited
		in.Reason = "process not found on host after agent restart"
		in.Since = time.Now()
		if err := s.UpdateInstance(ctx, in); err != nil {
			a.log.Warn("mark missing instance exited", "instance", in.ID, "error", err)
		}
	}
}

// adoptParallel bounds the adoptions adoptAll runs at once.
const adoptParallel = 16

// adoptOne rebinds one live local instance to session s, or stops it when
// it was replaced while this host was away.
func (a *Agent) adoptOne(ctx context.Context, s *registry.HostSession, st supervisor.Status) {
	_, err := s.Adopt(ctx, st.ID)
	switch {
	case err == nil:
		a.reclaimStartTicket(ctx, s, st)
		// Still ours: restarts may happen again (held since Restore).
		if err := a.sup.Resume(st.ID); err != nil {
			a.log.Warn("resume restarts", "instance", st.ID, "error", err)
		}
		a.writer.touch(st.ID)
	case errors.Is(err, registry.ErrNotHolder), errors.Is(err, registry.ErrNotFound):
		if a.writer.drop(st.ID) {
			a.log.Info("instance replaced while away; stopping it", "instance", st.ID)
			id := st.ID
			a.spawn(func() { a.stopReplaced(id) })
		}
	default:
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("adopt instance", "instance", st.ID, "error", err)
		a.writer.touch(st.ID)
	}
}

// syncEndpoints makes the registry's service endpoints of this host match
// the instances running here, bound to the new lease.
func (a *Agent) syncEndpoints(ctx context.Context, s *registry.HostSession) {
	var want []discovery.Endpoint
	for _, st := range a.sup.List() {
		if st.State == supervisor.StateRunning {
			want = append(want, a.endpoint(st))
		}
	}
	if _, _, err := a.services.SyncHost(ctx, a.cfg.HostID, s.Lease(), want); err != nil && ctx.Err() == nil {
		a.log.Warn("sync service endpoints", "error", err)
	}
}

// endpoint is the service endpoint of a running instance.
func (a *Agent) endpoint(st supervisor.Status) discovery.Endpoint {
	port, _ := strconv.Atoi(st.Meta[metaPort])
	return discovery.InstanceEndpoint(st.Meta[metaApp], st.Meta[metaRev], st.Meta[metaProc], st.ID,
		a.cfg.HostID, a.cfg.Addr, port, true)
}

// reclaimStartTicket takes back the start ticket of an adopted instance
// whose claim died with the previous lease before the ticket completed, so
// that no other host starts a second copy; the state writer then completes
// it with the instance's current state.
func (a *Agent) reclaimStartTicket(ctx context.Context, s *registry.HostSession, st supervisor.Status) {
	tid := st.Meta[metaTicket]
	if tid == "" {
		return
	}
	t, err := a.reg.Ticket(ctx, tid)
	if err != nil || t.Holder != "" || t.Op != registry.TicketStart {
		return // done, or someone holds it
	}
	if err := s.Reclaim(ctx, t); err != nil {
		a.log.Debug("reclaim start ticket", "instance", st.ID, "ticket", tid, "error", err)
		return
	}
	a.writer.expect(st.ID, t)
}

// serve runs the ticket loop and the host status loop on session s until ctx
// ends or the session's lease is lost.
func (a *Agent) serve(ctx context.Context, s *registry.HostSession) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-s.Done():
			cancel()
		case <-sctx.Done():
		}
	}()
	go func() {
		defer wg.Done()
		a.statusLoop(sctx, s)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for d := range a.reg.WatchDrain(sctx, a.cfg.HostID) {
			if a.draining.Swap(d) != d {
				a.log.Info("host drain changed", "draining", d)
			}
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchPeers(sctx)
	}()
	if !a.cfg.DisableReconciler {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.lead(sctx, int64(s.Lease()))
		}()
	}

	p := a.newPipeline(sctx, s)
	a.mu.Lock()
	clear(a.skipped)
	a.mu.Unlock()
	tickets := a.reg.WatchTickets(sctx, a.cfg.HostID)
	for watching := true; watching; {
		select {
		case ev, ok := <-tickets:
			if !ok {
				watching = false
				break
			}
			if ev.Err != nil {
				a.log.Warn("ticket watch", "error", ev.Err)
				continue
			}
			if ev.Deleted || ev.Claimed {
				a.unskip(ev.Ticket.ID)
				if ev.Ticket.Holder != a.cfg.HostID {
					a.abandon(ev.Ticket.ID)
				}
				if ev.Deleted {
					// A start still waiting for its artifact has no ticket
					// left to complete: stop waiting.
					a.cancelStartTicket(ev.Ticket.ID)
				}
				continue
			}
			if !a.eligible(ev.Ticket) {
				continue
			}
			if ev.Ticket.Op == registry.TicketStart && !a.fits(a.reservationOf(ev.Ticket)) {
				a.skip(ev.Ticket)
				continue
			}
			if a.markInflight(ev.Ticket.ID) {
				p.offer(ev.Ticket)
			}
		case <-a.roomCh:
			for _, t := range a.takeFitting() {
				if a.markInflight(t.ID) {
					p.offer(t)
				}
			}
		}
	}
	p.close()
	select {
	case <-s.Done():
		return registry.ErrLeaseLost
	default:
		return nil
	}
}

func (a *Agent) markInflight(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.inflight[id]; ok {
		return false
	}
	a.inflight[id] = struct{}{}
	return true
}

func (a *Agent) unmarkInflight(id string) {
	a.mu.Lock()
	delete(a.inflight, id)
	delete(a.waiting, id)
	a.mu.Unlock()
}

// setAbandon records how to abandon the wait before claiming ticket id.
func (a *Agent) setAbandon(id string, cancel context.CancelFunc) {
	a.mu.Lock()
	a.waiting[id] = cancel
	a.mu.Unlock()
}

// claiming marks that ticket id's claim is being sent: from now on it is
// no longer abandoned when someone else's claim shows up.
func (a *Agent) claiming(id string) {
	a.mu.Lock()
	delete(a.waiting, id)
	a.mu.Unlock()
}

// abandon stops waiting to claim ticket id (another host claimed it, or it
// is gone), saving a claim transaction that would fail.
func (a *Agent) abandon(id string) {
	a.mu.Lock()
	cancel := a.waiting[id]
	delete(a.waiting, id)
	a.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// liveCount is the number of instances supervised here that are not
// terminal, plus the starts reserved (claimed or being claimed, not yet
// reported by the supervisor). It comes from sets kept up to date by state
// changes, not from a walk of the supervisor.
func (a *Agent) liveCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.live) + len(a.reserved)
}

// noteState keeps the set of live (non-terminal) instances with what
// they reserve (from their meta); the first report of an instance ends
// its reservation.
func (a *Agent) noteState(id string, st supervisor.Status) {
	r := a.reservationFromMeta(st.Meta)
	a.mu.Lock()
	delete(a.reserved, id)
	if st.State.Terminal() {
		if _, was := a.live[id]; was {
			defer a.noteRoom()
		}
		delete(a.live, id)
	} else {
		a.live[id] = r
	}
	a.mu.Unlock()
}

// reserve takes room for instance id (reserving r) before its start
// ticket is claimed: false, and why, when the host cannot take it (see
// admit). A burst of tickets is thus never claimed past the capacity,
// though the instances start later.
func (a *Agent) reserve(id string, r reservation) (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ok, why := admit(a.capacity, a.resources, a.usageLocked(), r)
	if ok {
		a.reserved[id] = r
	}
	return ok, why
}

// usageLocked is what the live and reserved instances take.
func (a *Agent) usageLocked() usage {
	var u usage
	for _, r := range a.live {
		u.add(r)
	}
	for _, r := range a.reserved {
		u.add(r)
	}
	return u
}

// fits reports whether this host could take one more instance reserving r.
func (a *Agent) fits(r reservation) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ok, _ := admit(a.capacity, a.resources, a.usageLocked(), r)
	return ok
}

// settleReservation ends the reservation of instance id once its start
// ticket ran, unless a report of the supervisor is still to come (and
// will end it): the start failed, or the instance was running already.
func (a *Agent) settleReservation(id string) {
	supervised := a.sup.Has(id)
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, reported := a.live[id]; !supervised || reported {
		if _, held := a.reserved[id]; held && !reported {
			defer a.noteRoom()
		}
		delete(a.reserved, id)
	}
}

// unreserve gives back the room of a start that did not happen.
func (a *Agent) unreserve(id string) {
	a.mu.Lock()
	delete(a.reserved, id)
	a.mu.Unlock()
	a.noteRoom()
}

// eligible reports whether this host may claim t: targeted here or
// untargeted, not among the hosts that already failed it, and for starts
// not draining. Whether a start fits is asked apart (fits): a ticket
// that does not fit yet is kept for when room frees up.
func (a *Agent) eligible(t registry.Ticket) bool {
	if t.Holder != "" {
		return false
	}
	if t.Host != "" && t.Host != a.cfg.HostID {
		return false
	}
	if t.Excludes(a.cfg.HostID) {
		return false
	}
	if t.Op == registry.TicketStart && a.draining.Load() {
		return false
	}
	return true
}

// skip keeps start ticket t, passed over because it did not fit this
// host, for when room frees up here (noteRoom), unless another host
// takes it meanwhile (unskip).
func (a *Agent) skip(t registry.Ticket) {
	a.mu.Lock()
	a.skipped[t.ID] = t
	a.mu.Unlock()
}

func (a *Agent) unskip(id string) {
	a.mu.Lock()
	delete(a.skipped, id)
	a.mu.Unlock()
}

// takeFitting removes from the skipped tickets, and returns oldest
// first, those that fit the room there is now (each counted against what
// the ones before it reserve), and drops those this host may no longer
// take.
func (a *Agent) takeFitting() []registry.Ticket {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]string, 0, len(a.skipped))
	for id := range a.skipped {
		ids = append(ids, id)
	}
	sort.Strings(ids) // ticket ids sort by creation time
	u := a.usageLocked()
	var out []registry.Ticket
	for _, id := range ids {
		t := a.skipped[id]
		if t.Excludes(a.cfg.HostID) || a.draining.Load() {
			delete(a.skipped, id)
			continue
		}
		r := a.reservationOf(t)
		if ok, _ := admit(a.capacity, a.resources, u, r); !ok {
			continue
		}
		u.add(r)
		delete(a.skipped, id)
		out = append(out, t)
	}
	return out
}

// noteRoom wakes the ticket loop to offer the start tickets it passed
// over for want of room. It never blocks.
func (a *Agent) noteRoom() {
	select {
	case a.roomCh <- struct{}{}:
	default:
	}
}

// backoff is a small exponential retry delay for reconnecting.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) reset() { b.cur = b.min }

// wait sleeps the current delay (with jitter) or until ctx ends; it reports
// whether ctx is still live.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.cur/2 + time.Duration(rand.Int64N(int64(b.cur/2)+1))
	b.cur *= 2
	if b.cur > b.max {
		b.cur = b.max
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
