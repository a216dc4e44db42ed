package agent

import (
	"context"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// writerSession is what the state writer needs of a host session
// (*registry.HostSession).
type writerSession interface {
	UpdateInstance(ctx context.Context, in registry.Instance) error
	CompleteWith(ctx context.Context, t registry.Ticket, in registry.Instance) error
	Complete(ctx context.Context, t registry.Ticket) error
	Lease() clientv3.LeaseID
}

// instanceReader reads an instance record (*registry.Registry).
type instanceReader interface {
	Instance(ctx context.Context, id string) (registry.Instance, error)
}

// endpointPublisher registers and removes service endpoints
// (*discovery.Store).
type endpointPublisher interface {
	Put(ctx context.Context, e discovery.Endpoint, lease clientv3.LeaseID) error
	Delete(ctx context.Context, service, id string) error
}

// writerDeps is what the state writer needs of the rest of the agent.
type writerDeps struct {
	host, addr string // this host's id and address (records, endpoints)
	log        hclog.Logger
	// session returns the live session (nil while there is none) and a
	// channel closed when it changes.
	session   func() (writerSession, <-chan struct{})
	instances instanceReader
	endpoints endpointPublisher
	// onReplaced is called, at most once per instance, when the registry
	// gives the instance to another host or has ended it while it runs
	// here: the local copy must stop. It must not block.
	onReplaced func(id string)
	// ticketToRunning observes the seconds from a start ticket's creation
	// to its instance's running write.
	ticketToRunning prometheus.Observer
}

// currentSession returns the live session, nil while there is none.
func (d *writerDeps) currentSession() writerSession {
	s, _ := d.session()
	return s
}

// joinReason is a, then b, joined by ", " when both are set.
func joinReason(a, b string) string {
	if a == "" {
		return b
	}
	return a + ", " + b
}

// roundDelay rounds a restart delay for people: tenths of a second below
// 10 s, whole seconds above.
func roundDelay(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

// toInstance builds the registry record of instance st supervised on host.
func toInstance(host string, st supervisor.Status) registry.Instance {
	inst := registry.Instance{
		ID:       st.ID,
		App:      st.Meta[metaApp],
		Rev:      st.Meta[metaRev],
		Proc:     st.Meta[metaProc],
		Host:     host,
		PID:      st.PID,
		State:    registry.InstanceState(st.State),
		Since:    st.Since,
		Restarts: st.Restarts,
		Signal:   st.Signal,
		Reason:   st.Reason,
		Health:   st.Health,
		Ticket:   st.Meta[metaTicket],
	}
	if st.State == supervisor.StateBackoff && st.Backoff > 0 && !st.Held {
		inst.Reason = joinReason(st.Reason, "restarting in "+roundDelay(st.Backoff).String())
	}
	if !st.StartTime.IsZero() {
		inst.PIDStart = st.StartTime.UnixNano()
	}
	if p, err := strconv.Atoi(st.Meta[metaPort]); err == nil {
		inst.Port = p
	}
	if c, err := time.Parse(time.RFC3339Nano, st.Meta[metaCreated]); err == nil {
		inst.Created = c
	}
	if st.State.Terminal() && st.ExitCode >= 0 {
		code := st.ExitCode
		inst.ExitCode = &code
	}
	return inst
}
