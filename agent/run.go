package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/visorhq/visor/discovery"
)

// ShutdownTimeout bounds the agent's own work once Run's context ends
// (the shutdown order is in the package doc): releasing the tickets it had
// claimed shares drainTimeout, then the final work (stopping the
// instances with Config.StopOnExit, the final state writes, ending the
// session, the stops of replaced instances under way, the API's
// requests) takes at most finalTimeout. Run returns about ShutdownTimeout
// after ctx ends at the latest, even with etcd unreachable; a service
// manager should allow more than that between SIGTERM and SIGKILL (the
// unit's TimeoutStopSec is 30 s).
const ShutdownTimeout = drainTimeout + finalTimeout

const (
	drainTimeout = 2 * time.Second
	finalTimeout = 4 * time.Second
	// apiShutdownTimeout bounds the API's wait for its requests; it runs
	// beside the rest of the final work, so within finalTimeout.
	apiShutdownTimeout = 2 * time.Second
)

// Run runs the agent until ctx ends: supervisor, local API, registry
// session, ticket pipeline and state writer, as one errgroup of actors.
// It stops them in the order the package doc gives, and returns once
// every goroutine it started has exited. Instances keep running unless
// Config.StopOnExit. A cancelled ctx is a clean shutdown (nil error); a
// service that fails (a DNS server that cannot listen, the supervisor)
// stops the agent with its error.
func (a *Agent) Run(ctx context.Context) error {
	// The services outlive ctx until the last step of the shutdown; the
	// API stops at the start of the final work.
	svcCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServices()
	apiCtx, stopAPI := context.WithCancel(svcCtx)
	defer stopAPI()
	g, failed := errgroup.WithContext(svcCtx)
	g.Go(func() error { return serviceErr("supervisor", a.sup.Run(svcCtx)) })
	api, err := a.startUp(ctx)
	if err != nil {
		stopServices()
		return errors.Join(err, g.Wait())
	}
	a.startServices(g, svcCtx, apiCtx, api)

	// 1. The session loop ends with ctx (or a failed service): no more
	// claims; what was claimed and not started is released.
	loopCtx, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	defer context.AfterFunc(failed, stopLoop)()
	loopErr := a.sessionLoop(loopCtx)
	// 2. Every start waiting for an artifact has given up by now, which
	// cancelled the fetches: wait for them to clean up.
	a.artifacts.wait()
	// 3 to 6. The final work, under one deadline.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalTimeout)
	defer cancel()
	stopAPI()
	a.finish(fctx)
	// 7. The services.
	stopServices()
	return errors.Join(loopErr, g.Wait())
}

// startUp restores the supervisor's instances (their ports, reservations
// and states for the writer) and opens the API listeners.
func (a *Agent) startUp(ctx context.Context) (*apiServer, error) {
	restored, err := a.sup.Restore(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: restore instances: %w", err)
	}
	for _, st := range restored {
		// A terminal instance holds no port: its process is gone and
		// nothing restarts it by itself.
		if p, err := strconv.Atoi(st.Meta[metaPort]); err == nil && !st.State.Terminal() {
			a.ports.Reserve(p, st.ID)
		}
		a.adm.noteState(st.ID, st)
		a.writer.update(st.ID, st)
	}
	a.log.Info("agent starting", "restored_instances", len(restored), "cgroups", a.sup.CgroupMode())
	return a.listen()
}

// startServices adds the actors that serve until the end of the shutdown
// (ctx) to g: state writer, service registrar, DNS server, artifact cache
// pruning, the dashboard's history; and the API, which stops earlier
// (apiCtx).
func (a *Agent) startServices(g *errgroup.Group, ctx, apiCtx context.Context, api *apiServer) {
	g.Go(func() error { api.serve(apiCtx); return nil })
	g.Go(func() error { a.writer.run(ctx); return nil })
	g.Go(func() error {
		if err := a.registrar.Run(ctx); err != nil {
			a.log.Error("service registrar stopped", "error", err)
		}
		return nil // registrations wait for the next agent; not worth a stop
	})
	if a.cfg.DNSAddr != "" {
		d := &discovery.DNSServer{Addr: a.cfg.DNSAddr, Store: a.services, Logger: a.cfg.Logger}
		g.Go(func() error {
			// A DNS server that cannot listen is a start-up error, not a
			// degraded mode: it stops the agent.
			err := serviceErr("dns", d.Run(ctx))
			if err != nil {
				a.log.Error("dns server stopped", "addr", a.cfg.DNSAddr, "error", err)
			}
			return err
		})
	}
	g.Go(func() error { a.pruneLoop(ctx); return nil })
	if a.uiHist != nil {
		g.Go(func() error { a.uiHist.Run(ctx); return nil })
	}
}

// serviceErr is a service's error for Run: nil for a clean stop.
func serviceErr(name string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return fmt.Errorf("agent: %s: %w", name, err)
}

// finish is the final work of the shutdown, bounded by fctx (steps 3 to 6
// of the package doc's order): with Config.StopOnExit the instances stop;
// their last states are written; the session ends (closed with
// StopOnExit, else left to expire, so that a restarted agent takes it
// over); the stops of replaced instances under way get until fctx's
// deadline.
func (a *Agent) finish(fctx context.Context) {
	a.cfg.Stopping()
	a.log.Info("agent shutting down", "stop_instances", a.cfg.StopOnExit)
	if a.cfg.StopOnExit {
		a.stopAll(fctx, "agent shutdown")
	}
	a.writer.flush(fctx)
	if s := a.sess.current(); s != nil {
		if a.cfg.StopOnExit {
			// Nothing runs here any more: leave the fleet at once.
			_ = s.Close(fctx)
		} else {
			// Let the lease run out by itself: a restarted agent takes it
			// over, and if none comes, the reconciler sees the host leave.
			s.Orphan()
		}
	}
	a.bg.closeAndWait(fctx)
}

// spawn runs f in a goroutine of the background group (see bgGroup).
func (a *Agent) spawn(f func(ctx context.Context)) { a.bg.spawn(f) }

// bgGroup owns goroutines spawned outside the main loops (stopping
// replaced instances). Run's shutdown closes it (spawn then starts
// nothing more: a replaced instance left running is found again by the
// next run's adoption), waits for what runs until the final deadline, then
// cancels their context and waits for them to return.
type bgGroup struct {
	wg     sync.WaitGroup
	mu     sync.Mutex // guards the fields below
	closed bool
	ctx    context.Context // passed to f; ended by closeAndWait
	cancel context.CancelFunc
}

func (g *bgGroup) spawn(f func(ctx context.Context)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	if g.ctx == nil {
		g.ctx, g.cancel = context.WithCancel(context.Background())
	}
	ctx := g.ctx
	g.wg.Go(func() { f(ctx) })
}

// closeAndWait stops spawn from starting more, waits for what runs until
// deadline ends, then cancels it and waits for it to return.
func (g *bgGroup) closeAndWait(deadline context.Context) {
	g.mu.Lock()
	g.closed = true
	cancel := g.cancel
	g.mu.Unlock()
	if cancel == nil {
		return // nothing was ever spawned
	}
	done := make(chan struct{})
	go func() {
		g.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-deadline.Done():
		cancel()
		<-done
	}
	cancel()
}
