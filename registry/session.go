package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Hosts lists the live hosts sorted by id. If some stored values (hosts or
// drains) do not decode, it returns the others together with a BadRecords
// error naming them (see Skipped). A host whose record is bad is left out
// although its key (and so, usually, its lease) exists.
func (r *Registry) Hosts(ctx context.Context) ([]Host, error) {
	resp, err := r.cli.Get(ctx, r.hostsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, errorf("registry: list hosts: %w", err)
	}
	var out []Host
	var errs []error
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), r.hostsDir())
		if strings.Contains(id, "/") {
			continue
		}
		h, err := decodeHost(kv, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, h)
	}
	drains, err := r.Drains(ctx)
	if bad, err := Skipped(err); err != nil {
		return nil, err
	} else if bad != nil {
		errs = append(errs, bad) // the draining flags may be short of these
	}
	for i := range out {
		_, out[i].Draining = drains[out[i].ID]
	}
	return out, joinCorrupt(errs)
}

// Host returns one live host.
func (r *Registry) Host(ctx context.Context, id string) (Host, error) {
	if err := validName("host", id); err != nil {
		return Host{}, err
	}
	resp, err := r.cli.Get(ctx, r.hostKey(id))
	if err != nil {
		return Host{}, errorf("registry: get host %q: %w", id, err)
	}
	kv := first(resp.Kvs)
	if kv == nil {
		return Host{}, fmt.Errorf("%w: host %q", ErrNotFound, id)
	}
	return decodeHost(kv, id)
}

// HostSession is one agent's presence in the registry: a lease kept alive
// by one KeepAlive stream, the host key bound to it, and the claims and
// instance index entries the host writes with it. When the lease is lost
// they all vanish together, so other hosts may take over the tickets.
type HostSession struct {
	r     *Registry
	id    string
	lease clientv3.LeaseID
	log   hclog.Logger

	cancel context.CancelFunc // stops the keepalive stream
	donec  chan struct{}      // closed by the keepalive goroutine on exit
	wg     sync.WaitGroup     // the keepalive goroutine

	mu sync.Mutex
	// known holds, per instance this session holds, the record as it last
	// wrote or read it, with its ModRevision: the base of the next
	// holder update, which then needs no read first. A copy that is stale
	// (someone else wrote the record since) fails the update's revision
	// compare, is forgotten, and the update reads the record and goes on.
	known map[string]Instance
}

// remember keeps in (as stored at in.ModRevision) as the base of this
// session's next write of it, or forgets it when this session no longer
// writes it: terminal, lost or another host's.
func (s *HostSession) remember(in Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.Host != s.id || in.State.Terminal() || in.State == InstanceLost || in.ModRevision == 0 {
		delete(s.known, in.ID)
		return
	}
	// The caller may reuse its map and pointer; keep copies.
	in.Restarts = maps.Clone(in.Restarts)
	if in.ExitCode != nil {
		code := *in.ExitCode
		in.ExitCode = &code
	}
	s.known[in.ID] = in
}

// forget drops the remembered copy of instance id.
func (s *HostSession) forget(id string) {
	s.mu.Lock()
	delete(s.known, id)
	s.mu.Unlock()
}

// stored returns the record of instance id this session remembers (cached
// true), else reads it from etcd.
func (s *HostSession) stored(ctx context.Context, id string) (in Instance, cached bool, err error) {
	s.mu.Lock()
	in, cached = s.known[id]
	s.mu.Unlock()
	if cached {
		return in, true, nil
	}
	in, err = s.r.Instance(ctx, id)
	return in, false, err
}

// RegisterHost grants a lease with ttl (rounded up to whole seconds, default
// 10s), writes hosts/<id> bound to it and keeps the lease alive until Close,
// Orphan or loss. It fails with ErrExists while another live lease holds
// the host key. Started and Updated default to now.
func (r *Registry) RegisterHost(ctx context.Context, h Host, ttl time.Duration) (*HostSession, error) {
	if err := validName("host", h.ID); err != nil {
		return nil, err
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: host ttl %s is negative", ErrInvalid, ttl)
	}
	if ttl == 0 {
		ttl = 10 * time.Second
	}
	now := time.Now().UTC()
	if h.Started.IsZero() {
		h.Started = now
	}
	if h.Updated.IsZero() {
		h.Updated = now
	}
	grant, err := r.cli.Grant(ctx, int64(math.Ceil(ttl.Seconds())))
	if err != nil {
		return nil, errorf("registry: register host %q: grant lease: %w", h.ID, accessErr(err))
	}
	revoke := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		r.cli.Revoke(rctx, grant.ID)
	}
	k := r.hostKey(h.ID)
	resp, err := r.cli.Txn(ctx).If(absent(k)).Then(clientv3.OpPut(k, encode(h), clientv3.WithLease(grant.ID))).Commit()
	if err != nil {
		revoke()
		return nil, errorf("registry: register host %q: %w", h.ID, accessErr(err))
	}
	if !resp.Succeeded {
		revoke()
		return nil, fmt.Errorf("%w: host %q is held by another live lease", ErrExists, h.ID)
	}
	kctx, cancel := context.WithCancel(context.Background())
	ka, err := r.cli.KeepAlive(kctx, grant.ID)
	if err != nil {
		cancel()
		revoke()
		return nil, errorf("registry: register host %q: keepalive: %w", h.ID, err)
	}
	s := &HostSession{r: r, id: h.ID, lease: grant.ID, cancel: cancel, donec: make(chan struct{}),
		log: r.log.With("host", h.ID), known: make(map[string]Instance)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(s.donec)
		for range ka {
			// The client closes ka when the lease expires, is revoked or
			// kctx ends; responses carry nothing we need.
		}
		if kctx.Err() == nil {
			s.log.Info("host lease lost", "lease", int64(grant.ID))
		}
	}()
	s.log.Info("host registered", "lease", int64(grant.ID), "ttl", grant.TTL)
	return s, nil
}

// ID returns the host id.
func (s *HostSession) ID() string { return s.id }

// Lease returns the session's lease.
func (s *HostSession) Lease() clientv3.LeaseID { return s.lease }

// Done is closed when the lease is lost (expired, revoked, or not renewed
// within its TTL) or the session is closed or orphaned.
func (s *HostSession) Done() <-chan struct{} { return s.donec }

// Close stops the keepalives and revokes the lease, which deletes the host
// key, its claims and its instance index entries. It waits for the
// keepalive goroutine. Revoking an already lost lease is not an error.
func (s *HostSession) Close(ctx context.Context) error {
	s.cancel()
	s.wg.Wait()
	if _, err := s.r.cli.Revoke(ctx, s.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return errorf("registry: close host session %q: %w", s.id, err)
	}
	return nil
}

// Orphan stops the keepalives without revoking the lease, which then
// expires after its TTL. Done is closed. For tests of lease expiry and for
// handing over to a restarted agent.
func (s *HostSession) Orphan() {
	s.cancel()
	s.wg.Wait()
}

// leaseErr maps an etcd lease error to ErrLeaseLost.
func (s *HostSession) leaseErr(what string, err error) error {
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return errorf("%s: %w", what, ErrLeaseLost)
	}
	return errorf("%s: %w", what, err)
}

// UpdateHost rewrites the host record (status, load) under the same lease.
// ErrLeaseLost if the lease is gone.
func (s *HostSession) UpdateHost(ctx context.Context, h Host) error {
	h.ID = s.id
	if h.Updated.IsZero() {
		h.Updated = time.Now().UTC()
	}
	k := s.r.hostKey(s.id)
	what := fmt.Sprintf("registry: update host %q", s.id)
	resp, err := s.r.cli.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(k), "=", s.lease)).
		Then(clientv3.OpPut(k, encode(h), clientv3.WithLease(s.lease))).Commit()
	if err != nil {
		return s.leaseErr(what, err)
	}
	if !resp.Succeeded {
		return errorf("%s: %w", what, ErrLeaseLost)
	}
	return nil
}

// txn is a transaction of a ticket holder as claimTxn, completeTxn and
// releaseTxn build it: its compares, its writes when they hold, and its
// reads when they do not, for the matching claimFailed, completeFailed or
// releaseFailed to say why.
type txn struct {
	cmps []clientv3.Cmp
	then []clientv3.Op
	els  []clientv3.Op
}

// commit sends x as one transaction; what names the operation in errors.
func (s *HostSession) commit(ctx context.Context, what string, x txn) (*clientv3.TxnResponse, error) {
	resp, err := s.r.cli.Txn(ctx).If(x.cmps...).Then(x.then...).Else(x.els...).Commit()
	if err != nil {
		return nil, s.leaseErr(what, err)
	}
	return resp, nil
}

// holderCmp compares that this session holds the claim of ticket id.
func (s *HostSession) holderCmp(id string) clientv3.Cmp {
	return clientv3.Compare(clientv3.LeaseValue(s.r.claimKey(id)), "=", s.lease)
}
