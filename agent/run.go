package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/visorhq/visor/discovery"
)

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
		a.adm.noteState(st.ID, st)
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
	a.bg.closeAndWait(fctx)
	cancelBG()
	wg.Wait()
	if err := <-supErr; err != nil && !errors.Is(err, context.Canceled) {
		return errors.Join(loopErr, fmt.Errorf("agent: supervisor: %w", err))
	}
	return loopErr
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
