package discovery

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TTL bounds of external registrations.
const (
	// MinTTL is the shortest TTL a registration may ask for.
	MinTTL = time.Second
	// MaxTTL is the longest TTL a registration may ask for.
	MaxTTL = time.Hour
)

// RegistrarConfig configures a Registrar. Zero values take the documented
// defaults.
type RegistrarConfig struct {
	// Host is the Visor host id recorded on registrations; may be empty.
	Host string
	// DefaultTTL applies when a registration asks for none. Default 30s.
	// Clients should renew every TTL/3.
	DefaultTTL time.Duration
	// MaxPerClient caps the live registrations of one client (remote
	// address or token name). Default 100.
	MaxPerClient int
	// MaxMetaBytes caps a registration's metadata, keys plus values.
	// Default 4096.
	MaxMetaBytes int
	// Logger receives lifecycle messages. Default: discard.
	Logger hclog.Logger
}

// Registrar holds the external registrations made through one agent. All
// of them are stored with ONE lease, the agent's host lease, so keeping
// them alive costs the agent's lease keepalive and nothing more: a renewal
// only moves an in-memory deadline. Run deletes a registration whose TTL
// passes without renewal; if the agent dies, its lease takes every
// registration with it.
//
// The in-memory table is the TTL bookkeeping, not a second copy of the
// truth: etcd holds the endpoints, and lookups always read etcd.
type Registrar struct {
	store *Store
	cfg   RegistrarConfig
	log   hclog.Logger

	wake chan struct{}

	mu       sync.Mutex
	lease    clientv3.LeaseID
	resync   bool // re-put every registration (lease changed or a put failed)
	regs     map[string]*registration
	queue    deadlineQueue
	byClient map[string]int // live registrations + reservations in flight
	deletes  map[string]Endpoint
}

type registration struct {
	ep       Endpoint
	client   string
	ttl      time.Duration
	deadline time.Time
	index    int // in queue
}

// NewRegistrar returns a Registrar putting endpoints through store with
// lease (0 = no lease, for tests and single-node use). Call Run to expire
// registrations.
func NewRegistrar(store *Store, lease clientv3.LeaseID, cfg RegistrarConfig) *Registrar {
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = 30 * time.Second
	}
	if cfg.MaxPerClient <= 0 {
		cfg.MaxPerClient = 100
	}
	if cfg.MaxMetaBytes <= 0 {
		cfg.MaxMetaBytes = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Registrar{
		store:    store,
		cfg:      cfg,
		log:      cfg.Logger.Named("registrar"),
		wake:     make(chan struct{}, 1),
		lease:    lease,
		regs:     make(map[string]*registration),
		byClient: make(map[string]int),
		deletes:  make(map[string]Endpoint),
	}
}

// Config returns the effective configuration, defaults filled in.
func (r *Registrar) Config() RegistrarConfig { return r.cfg }

func (r *Registrar) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func newID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("discovery: crypto/rand: %v", err)) // cannot fail on supported platforms
	}
	return "x" + hex.EncodeToString(b[:])
}

// Register stores e as a new external registration of client with ttl (0 =
// DefaultTTL) and returns it with its assigned ID and Expires. Service,
// Version, Addr, Port (1-65535) and Meta come from e; Host, Source,
// Healthy and Registered are set here. Errors: ErrInvalid, ErrTooLarge,
// ErrLimit; nothing is stored on error.
func (r *Registrar) Register(ctx context.Context, client string, e Endpoint, ttl time.Duration) (Endpoint, error) {
	e, ttl, err := r.check(e, ttl)
	if err != nil {
		return Endpoint{}, err
	}

	r.mu.Lock()
	if r.byClient[client] >= r.cfg.MaxPerClient {
		n := r.byClient[client]
		r.mu.Unlock()
		return Endpoint{}, fmt.Errorf("%w: client %q holds %d registrations, the cap is %d", ErrLimit, client, n, r.cfg.MaxPerClient)
	}
	r.byClient[client]++ // reserve the slot while the put is in flight
	lease := r.lease
	r.mu.Unlock()

	if err := r.store.Put(ctx, e, lease); err != nil {
		r.mu.Lock()
		r.release(client)
		// The put may have landed before the error (a cancelled request):
		// make sure it does not outlive the answer.
		r.deletes[e.ID] = e
		r.mu.Unlock()
		r.poke()
		return Endpoint{}, err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	reg := &registration{ep: e, client: client, ttl: ttl, deadline: time.Now().Add(ttl)}
	r.regs[e.ID] = reg
	heap.Push(&r.queue, reg)
	if r.lease != lease {
		r.resync = true // SetLease ran while we put with the old lease
	}
	r.poke()
	r.log.Debug("registered", "service", e.Service, "id", e.ID, "client", client, "ttl", ttl)
	out := reg.ep
	out.Expires = reg.deadline.UTC()
	return out, nil
}

// check fills in and validates a new registration's endpoint and TTL; it
// touches no state.
func (r *Registrar) check(e Endpoint, ttl time.Duration) (Endpoint, time.Duration, error) {
	if ttl == 0 {
		ttl = r.cfg.DefaultTTL
	}
	if ttl < MinTTL || ttl > MaxTTL {
		return Endpoint{}, 0, fmt.Errorf("%w: ttl %v out of range %v-%v", ErrInvalid, ttl, MinTTL, MaxTTL)
	}
	if e.Port < 1 || e.Port > 65535 {
		return Endpoint{}, 0, fmt.Errorf("%w: port %d out of range 1-65535", ErrInvalid, e.Port)
	}
	if err := validateMeta(e.Meta, r.cfg.MaxMetaBytes); err != nil {
		return Endpoint{}, 0, err
	}
	e.ID = newID()
	e.Host = r.cfg.Host
	e.Source = SourceExternal
	e.Healthy = true
	e.Registered = time.Now().UTC()
	e.Expires = time.Time{}
	e.ModRevision = 0
	if err := e.validate(); err != nil {
		return Endpoint{}, 0, err
	}
	return e, ttl, nil
}

func (r *Registrar) release(client string) {
	if r.byClient[client] <= 1 {
		delete(r.byClient, client)
		return
	}
	r.byClient[client]--
}

// Renew moves registration id's deadline to now + its TTL and returns it.
// It writes nothing to etcd. ErrUnknown if id is not held (never
// registered here, freed, or already expired).
func (r *Registrar) Renew(_ context.Context, id string) (Endpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reg, ok := r.regs[id]
	if !ok {
		return Endpoint{}, fmt.Errorf("%w: %q", ErrUnknown, id)
	}
	reg.deadline = time.Now().Add(reg.ttl)
	heap.Fix(&r.queue, reg.index)
	out := reg.ep
	out.Expires = reg.deadline.UTC()
	return out, nil
}

// Registration returns the held registration id with its current Expires.
func (r *Registrar) Registration(id string) (Endpoint, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reg, ok := r.regs[id]
	if !ok {
		return Endpoint{}, false
	}
	out := reg.ep
	out.Expires = reg.deadline.UTC()
	return out, true
}

// registration returns the held registration id and the client that made it.
func (r *Registrar) registration(id string) (Endpoint, string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reg, ok := r.regs[id]
	if !ok {
		return Endpoint{}, "", false
	}
	return reg.ep, reg.client, true
}

// Len returns the number of registrations held.
func (r *Registrar) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.regs)
}

// Free deregisters id and deletes its endpoint. ErrUnknown if id is not
// held. If the delete fails the registration is already gone from the
// Registrar; Run retries the delete.
func (r *Registrar) Free(ctx context.Context, id string) error {
	r.mu.Lock()
	reg, ok := r.regs[id]
	if !ok {
		r.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrUnknown, id)
	}
	r.remove(reg)
	r.mu.Unlock()
	if err := r.store.Delete(ctx, reg.ep.Service, reg.ep.ID); err != nil {
		r.mu.Lock()
		r.deletes[reg.ep.ID] = reg.ep
		r.mu.Unlock()
		r.poke()
		return err
	}
	r.log.Debug("freed", "service", reg.ep.Service, "id", id)
	return nil
}

// remove drops reg from the table; r.mu must be held.
func (r *Registrar) remove(reg *registration) {
	delete(r.regs, reg.ep.ID)
	heap.Remove(&r.queue, reg.index)
	r.release(reg.client)
}

// SetLease binds every registration to lease from now on: after the agent
// got a new lease (the old one expired during an etcd outage), Run re-puts
// all registrations with it.
func (r *Registrar) SetLease(id clientv3.LeaseID) {
	r.mu.Lock()
	r.lease = id
	r.resync = true
	r.mu.Unlock()
	r.poke()
}

// retryDelay spaces retries of failed etcd writes in Run.
const retryDelay = time.Second

// Run expires registrations whose TTL passed, retries failed deletes and
// re-puts registrations after SetLease. It is one goroutine sleeping on a
// timer set to the earliest deadline. It returns nil when ctx ends;
// registrations stay in etcd, bound to the lease (revoking it on agent
// shutdown removes them).
func (r *Registrar) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := r.sweep(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.wake:
		}
	}
}

// sweep does one round of Run's work and returns how long to sleep.
func (r *Registrar) sweep(ctx context.Context) time.Duration {
	r.mu.Lock()
	now := time.Now()
	for r.queue.Len() > 0 && !r.queue[0].deadline.After(now) {
		reg := r.queue[0]
		r.remove(reg)
		r.deletes[reg.ep.ID] = reg.ep
		r.log.Info("registration expired", "service", reg.ep.Service, "id", reg.ep.ID, "client", reg.client, "ttl", reg.ttl)
	}
	deletes := make([]Endpoint, 0, len(r.deletes))
	for _, ep := range r.deletes {
		deletes = append(deletes, ep)
	}
	clear(r.deletes)
	var puts []Endpoint
	lease := r.lease
	if r.resync {
		r.resync = false
		puts = make([]Endpoint, 0, len(r.regs))
		for _, reg := range r.regs {
			puts = append(puts, reg.ep)
		}
	}
	r.mu.Unlock()

	failed := false
	for _, ep := range deletes {
		if err := r.write(ctx, func(c context.Context) error { return r.store.Delete(c, ep.Service, ep.ID) }); err != nil {
			r.log.Warn("delete expired registration", "service", ep.Service, "id", ep.ID, "error", err)
			failed = true
			r.mu.Lock()
			r.deletes[ep.ID] = ep
			r.mu.Unlock()
		}
	}
	for _, ep := range puts {
		if err := r.write(ctx, func(c context.Context) error { return r.store.Put(c, ep, lease) }); err != nil {
			r.log.Warn("re-put registration", "service", ep.Service, "id", ep.ID, "error", err)
			failed = true
			r.mu.Lock()
			r.resync = true
			r.mu.Unlock()
			break
		}
		r.mu.Lock()
		if _, held := r.regs[ep.ID]; !held {
			r.deletes[ep.ID] = ep // freed or expired while we re-put it
			failed = true
		}
		r.mu.Unlock()
	}
	if len(puts) > 0 && !failed {
		r.log.Info("registrations re-put with new lease", "count", len(puts), "lease", int64(lease))
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	wait := time.Hour
	if r.queue.Len() > 0 {
		wait = time.Until(r.queue[0].deadline)
	}
	if failed && wait > retryDelay {
		wait = retryDelay
	}
	return max(wait, 0)
}

// write runs one etcd write bounded in time, also after ctx ended.
func (r *Registrar) write(ctx context.Context, f func(context.Context) error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return f(c)
}

// deadlineQueue is a min-heap of registrations by deadline.
type deadlineQueue []*registration

func (q deadlineQueue) Len() int           { return len(q) }
func (q deadlineQueue) Less(i, j int) bool { return q[i].deadline.Before(q[j].deadline) }
func (q deadlineQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index = i
	q[j].index = j
}
func (q *deadlineQueue) Push(x any) {
	reg := x.(*registration)
	reg.index = len(*q)
	*q = append(*q, reg)
}
func (q *deadlineQueue) Pop() any {
	old := *q
	n := len(old)
	reg := old[n-1]
	old[n-1] = nil
	reg.index = -1
	*q = old[:n-1]
	return reg
}
