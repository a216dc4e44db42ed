package agent

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// adoptSupervisor is what adoption needs of the supervisor
// (*supervisor.Supervisor).
type adoptSupervisor interface {
	List() []supervisor.Status
	Resume(id string) error
}

// adoptWriter is what adoption needs of the state writer (*stateWriter).
type adoptWriter interface {
	touch(id string)
	drop(id string) bool
	expect(id string, t registry.Ticket)
}

// adoptRegistry is what adoption reads of the registry (*registry.Registry).
type adoptRegistry interface {
	HostInstances(ctx context.Context, host string) ([]registry.Instance, error)
	Ticket(ctx context.Context, id string) (registry.Ticket, error)
}

// adoptSession is what adoption writes with a new session
// (*registry.HostSession).
type adoptSession interface {
	Adopt(ctx context.Context, id string) (registry.Instance, error)
	Reclaim(ctx context.Context, t registry.Ticket) error
	UpdateInstance(ctx context.Context, in registry.Instance) error
}

// adopter re-binds the local instances to a new session (adoptAll): the
// agent's part that runs when a session comes up, with only what it needs.
type adopter struct {
	host   string
	log    hclog.Logger
	sup    adoptSupervisor
	writer adoptWriter
	reg    adoptRegistry
	// replaced stops instance id, which another host now holds, in the
	// background (Agent.stopReplaced); it must not block.
	replaced func(id string)
}

// adopter returns the agent's adopter.
func (a *Agent) adopter() *adopter {
	return &adopter{host: a.cfg.HostID, log: a.log, sup: a.sup, writer: a.writer, reg: a.reg,
		replaced: func(id string) { a.spawn(func(ctx context.Context) { a.stopReplaced(ctx, id) }) }}
}

// adoptAll re-binds every local instance to session s. Instances the
// registry gave to another host (or marked lost) while this agent was away
// are stopped here: they were replaced. Registry instances of this host
// with no local process are written back as exited.
func (a *adopter) adoptAll(ctx context.Context, s adoptSession) {
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

	insts, err := a.reg.HostInstances(ctx, a.host)
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
func (a *adopter) adoptOne(ctx context.Context, s adoptSession, st supervisor.Status) {
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
			a.replaced(st.ID)
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
			want = append(want, instanceEndpoint(a.cfg.HostID, a.cfg.Addr, st))
		}
	}
	if _, _, err := a.services.SyncHost(ctx, a.cfg.HostID, s.Lease(), want); err != nil && ctx.Err() == nil {
		a.log.Warn("sync service endpoints", "error", err)
	}
}

// instanceEndpoint is the service endpoint of instance st running on host
// at addr.
func instanceEndpoint(host, addr string, st supervisor.Status) discovery.Endpoint {
	port, _ := strconv.Atoi(st.Meta[metaPort])
	return discovery.InstanceEndpoint(st.Meta[metaApp], st.Meta[metaRev], st.Meta[metaProc], st.ID,
		host, addr, port, true)
}

// reclaimStartTicket takes back the start ticket of an adopted instance
// whose claim died with the previous lease before the ticket completed, so
// that no other host starts a second copy; the state writer then completes
// it with the instance's current state.
func (a *adopter) reclaimStartTicket(ctx context.Context, s adoptSession, st supervisor.Status) {
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

// stopReplacedTimeout bounds the stop of a replaced instance; shutdown
// ends it earlier (see bgGroup).
const stopReplacedTimeout = 30 * time.Second

// stopReplaced stops and forgets an instance this host no longer holds,
// and frees its port once its process is gone (a stop that did not finish
// keeps it: the process may still listen on it). It gives up when ctx
// ends (the agent shuts down): the stop goes on while the supervisor
// runs, and a copy left running is stopped by the next agent's adoption,
// which finds it replaced again.
func (a *Agent) stopReplaced(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, stopReplacedTimeout)
	defer cancel()
	st, err := a.sup.Stop(ctx, id)
	switch {
	case err == nil:
		a.ports.freeOf(id, st)
	case ctx.Err() != nil:
		a.log.Warn("stop replaced instance: gave up (agent shutting down)", "instance", id, "error", err)
		return
	case !errors.Is(err, supervisor.ErrNotFound):
		a.log.Warn("stop replaced instance", "instance", id, "error", err)
	}
	_ = a.sup.Remove(id)
}
