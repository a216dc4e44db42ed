package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/time/rate"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/ui"
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
//
// The Agent owns the parts and wires them; each part gets only the narrow
// interface or the few values it needs (declared where it is used):
// admission (capacity bookkeeping, admission.go), the port allocator
// (ports.go), the state writer (writer.go), the ticket pipeline
// (pipeline.go) and what it executes (execute.go, start.go), adoption
// (adopt.go), the host record and its status writes (status.go), the
// local API (api.go) and the metrics (metrics.go). Run
// (run.go) runs them with one shutdown order.
type Agent struct {
	cfg       Config
	log       hclog.Logger
	reg       *registry.Registry
	sup       *supervisor.Supervisor
	ports     *portAllocator
	adm       *admission
	artifacts *artifactCache
	writer    *stateWriter
	metrics   *metrics
	services  *discovery.Store
	registrar *discovery.Registrar
	status    *hostStatus    // the host record and its periodic writes
	auth      *authenticator // API principals; set by listen
	uiHist    *ui.History    // the dashboard's history; set by listen, nil without HTTP
	started   time.Time

	// What the ticket pipelines of successive sessions share (see
	// pipeline.go, placement.go).
	place      *placer          // claim ranks and pacing
	inflight   *inflightTickets // tickets in the pipeline
	starts     *startRuns       // starts under way here
	startLimit *rate.Limiter    // Config.StartRate
	// draining is set while the registry says this host is being drained:
	// no start tickets are claimed then.
	draining atomic.Bool

	// bg owns goroutines spawned outside the main loops (stopping replaced
	// instances); see spawn.
	bg bgGroup

	sess      *sessionState // the current registry session (sessionstate.go)
	lease     leaseFile     // the session's lease, kept for a restart
	readyOnce sync.Once     // Config.Ready is called once, at the first session

	mu       sync.Mutex // guards httpAddr
	httpAddr string
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
	if lo, hi, ok := ephemeralOverlap(cfg.PortMin, cfg.PortMax, ephemeralRangeFile); ok {
		log.Warn("the instance port range overlaps the kernel's ephemeral ports (net.ipv4.ip_local_port_range): "+
			"a port there may be taken by an outgoing connection, and an instance given it cannot bind",
			"port_range", fmt.Sprintf("%d-%d", cfg.PortMin, cfg.PortMax), "overlap", fmt.Sprintf("%d-%d", lo, hi))
	}
	a := &Agent{
		cfg:        cfg,
		log:        log,
		reg:        reg,
		ports:      newPortAllocator(cfg.PortMin, cfg.PortMax),
		adm:        hostAdmission(cfg, log),
		artifacts:  newArtifactCache(filepath.Join(cfg.DataDir, "artifacts"), artifactLimitsOf(cfg), log.Named("artifacts")),
		started:    time.Now(),
		lease:      leaseFile(filepath.Join(cfg.DataDir, "lease")),
		place:      newPlacer(cfg, log),
		inflight:   newInflightTickets(),
		starts:     newStartRuns(),
		startLimit: rate.NewLimiter(rate.Limit(cfg.StartRate), cfg.StartBurst),
	}
	a.status = hostStatusOf(cfg, log, a.adm, a.started, a.HTTPAddr)
	if err := a.artifacts.prepareDirs(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	// The supervisor reports to the agent (Handler) only once Run starts it.
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
	a.metrics = newMetrics(log, sup)
	a.sess = newSessionState(a.metrics.setConnected)
	a.metrics.reg.MustRegister(newDeployCollector(reg, a.metrics.leader))
	a.services = discovery.NewStore(reg.Client(), reg.Prefix(), cfg.Logger)
	a.writer = newStateWriter(writerDeps{
		host:            cfg.HostID,
		addr:            cfg.Addr,
		log:             log,
		session:         a.sess.forWriter,
		instances:       reg,
		endpoints:       a.services,
		onReplaced:      func(id string) { a.spawn(func(ctx context.Context) { a.stopReplaced(ctx, id) }) },
		ticketToRunning: a.metrics.ticketToRunning,
	})
	a.registrar = discovery.NewRegistrar(a.services, 0, discovery.RegistrarConfig{
		Host:   cfg.HostID,
		Logger: cfg.Logger,
	})
	return a, nil
}

// InstanceStateChanged implements supervisor.StateHandler: it records the
// latest status for the state writer. It never blocks. The stop phase of a
// manual restart (Status.Restarting) is not recorded: in the registry the
// instance goes from running to running again with a new pid, never
// through a stop, which is final there and would have the reconciler
// replace an instance that is about to run again. A terminal state gives
// the instance's port back (see portAllocator.follow).
func (a *Agent) InstanceStateChanged(id string, st supervisor.Status) {
	if st.Restarting {
		return
	}
	if !a.ports.follow(id, st) {
		a.log.Warn("instance runs again on a port given to another instance meanwhile", "instance", id, "port", st.Meta[metaPort])
	}
	a.adm.noteState(id, st)
	a.writer.update(id, st)
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
