package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/etcdwatch"
)

// Store reads and writes service endpoints in etcd under
// prefix+"services/<name>/<id>". It holds no state of its own and is safe
// for concurrent use.
type Store struct {
	cli    *clientv3.Client
	prefix string
	log    hclog.Logger
}

// NewStore returns a Store on cli with keys under prefix ("" means
// "/visor/"; a missing trailing slash is added). A nil logger discards.
func NewStore(cli *clientv3.Client, prefix string, logger hclog.Logger) *Store {
	if prefix == "" {
		prefix = "/visor/"
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Store{cli: cli, prefix: prefix, log: logger.Named("discovery")}
}

// Client returns the etcd client the Store uses.
func (s *Store) Client() *clientv3.Client { return s.cli }

func (s *Store) root() string { return s.prefix + "services/" }

func (s *Store) key(service, id string) string { return s.root() + service + "/" + id }

// parseKey splits a key under root into service and id.
func (s *Store) parseKey(key string) (service, id string, ok bool) {
	rest, ok := strings.CutPrefix(key, s.root())
	if !ok {
		return "", "", false
	}
	service, id, ok = strings.Cut(rest, "/")
	return service, id, ok && service != "" && id != ""
}

// encode validates e and returns the stored value.
func encode(e Endpoint) (string, error) {
	if err := e.validate(); err != nil {
		return "", err
	}
	if e.Registered.IsZero() {
		e.Registered = time.Now().UTC()
	}
	e.Expires = time.Time{} // never stored: renewals cost no write
	e.ModRevision = 0
	b, err := json.Marshal(e)
	if err != nil {
		return "", fmt.Errorf("encode endpoint %s/%s: %w", e.Service, e.ID, err)
	}
	if len(b) > maxValueBytes {
		return "", fmt.Errorf("%w: endpoint %s/%s is %d bytes, the limit is %d", ErrTooLarge, e.Service, e.ID, len(b), maxValueBytes)
	}
	return string(b), nil
}

// decode reads a stored endpoint; service and id come from the key.
func (s *Store) decode(kv *mvccpb.KeyValue) (Endpoint, error) {
	service, id, ok := s.parseKey(string(kv.Key))
	if !ok {
		return Endpoint{}, fmt.Errorf("%w: key %q is not an endpoint key", ErrInvalid, kv.Key)
	}
	var e Endpoint
	if err := json.Unmarshal(kv.Value, &e); err != nil {
		return Endpoint{Service: service, ID: id}, fmt.Errorf("%w: endpoint %s/%s does not decode: %w", ErrInvalid, service, id, err)
	}
	e.Service, e.ID = service, id
	e.ModRevision = kv.ModRevision
	// What was stored by hand must pass what Put checks: a hostile
	// address, port or name is refused here, not served by lookups.
	if err := e.validate(); err != nil {
		return Endpoint{Service: service, ID: id}, fmt.Errorf("endpoint %s/%s: %w", service, id, err)
	}
	return e, nil
}

// Put stores e, bound to lease when it is not 0 (instance endpoints use
// the host's lease, so a dead host's endpoints vanish with it). A zero
// Registered is set to now. Expires and ModRevision are not stored.
func (s *Store) Put(ctx context.Context, e Endpoint, lease clientv3.LeaseID) error {
	val, err := encode(e)
	if err != nil {
		return err
	}
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(lease))
	}
	if _, err := s.cli.Put(ctx, s.key(e.Service, e.ID), val, opts...); err != nil {
		return fmt.Errorf("put endpoint %s/%s: %w", e.Service, e.ID, err)
	}
	return nil
}

// Delete removes one endpoint. Deleting an absent endpoint is not an error.
func (s *Store) Delete(ctx context.Context, service, id string) error {
	if err := ValidateName(service); err != nil {
		return err
	}
	if err := validateID(id); err != nil {
		return err
	}
	if _, err := s.cli.Delete(ctx, s.key(service, id)); err != nil {
		return fmt.Errorf("delete endpoint %s/%s: %w", service, id, err)
	}
	return nil
}

// Lookup returns the endpoints of service name whose version matches
// versionOrRange (see ParseVersionQuery), only healthy ones when
// healthyOnly, ordered by id. Values that do not decode are skipped.
func (s *Store) Lookup(ctx context.Context, name, versionOrRange string, healthyOnly bool) ([]Endpoint, error) {
	eps, _, err := s.LookupRevision(ctx, name, versionOrRange, healthyOnly)
	return eps, err
}

// LookupRevision is Lookup that also returns the etcd revision of the
// answer: watching from revision+1 continues it without a gap.
func (s *Store) LookupRevision(ctx context.Context, name, versionOrRange string, healthyOnly bool) ([]Endpoint, int64, error) {
	if err := ValidateName(name); err != nil {
		return nil, 0, err
	}
	m, err := ParseVersionQuery(versionOrRange)
	if err != nil {
		return nil, 0, err
	}
	resp, err := s.cli.Get(ctx, s.root()+name+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("lookup %s: %w", name, err)
	}
	eps := make([]Endpoint, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e, err := s.decode(kv)
		if err != nil {
			s.log.Warn("skipping endpoint", "key", string(kv.Key), "error", err)
			continue
		}
		if healthyOnly && !e.Healthy {
			continue
		}
		if !m.Match(e.Version) {
			continue
		}
		eps = append(eps, e)
	}
	return eps, resp.Header.Revision, nil
}

// Services returns the names of all services with at least one endpoint,
// sorted.
func (s *Store) Services(ctx context.Context) ([]string, error) {
	resp, err := s.cli.Get(ctx, s.root(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	var names []string
	for _, kv := range resp.Kvs {
		service, _, ok := s.parseKey(string(kv.Key))
		if ok && (len(names) == 0 || names[len(names)-1] != service) {
			names = append(names, service)
		}
	}
	sort.Strings(names)
	return names, nil
}

// EventType says what happened to an endpoint.
type EventType string

// Event types.
const (
	// EventRegister is an endpoint put: a new registration or a change of
	// an existing one (e.g. its health); Endpoint is the new value.
	EventRegister EventType = "register"
	// EventFree is an endpoint removed: deregistered, expired, its instance
	// stopped or its host's lease lost; Endpoint is the last value.
	EventFree EventType = "free"
)

// Event is one change to a watched service, or an error.
type Event struct {
	// Type is EventRegister or EventFree; "" on a fatal error.
	Type EventType `json:"type"`
	// Endpoint is the new value (register) or the last value (free).
	Endpoint Endpoint `json:"endpoint"`
	// Revision is the etcd revision of the change. A revoked lease frees
	// many endpoints at one revision.
	Revision int64 `json:"revision"`
	// Err reports a value that did not decode (skipped; the watch goes on)
	// or, as the last event before the channel closes, a fatal error such
	// as ErrCompacted.
	Err error `json:"-"`
}

// Watch streams changes to service name ("" = every service) in revision
// order, starting at fromRevision (0 = from now). It re-establishes the
// etcd watch from the next revision if it breaks, so nothing is lost; if
// fromRevision has been compacted it sends an Event with ErrCompacted and
// closes. The channel closes when ctx ends.
func (s *Store) Watch(ctx context.Context, name string, fromRevision int64) <-chan Event {
	out := make(chan Event, 64)
	go func() {
		defer close(out)
		if name != "" {
			if err := ValidateName(name); err != nil {
				send(ctx, out, Event{Err: err})
				return
			}
		}
		s.watch(ctx, name, fromRevision, out)
	}()
	return out
}

func send(ctx context.Context, out chan<- Event, ev Event) bool {
	select {
	case out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Store) watch(ctx context.Context, name string, next int64, out chan<- Event) {
	key := s.root()
	if name != "" {
		key += name + "/"
	}
	retry := time.NewTimer(0)
	<-retry.C
	defer retry.Stop()
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify()}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		}
		wch := s.cli.Watch(wctx, key, opts...)
		for resp := range etcdwatch.Responses(ctx, wch) {
			if resp.CompactRevision != 0 {
				cancel()
				send(ctx, out, Event{Revision: resp.CompactRevision,
					Err: fmt.Errorf("%w: watch %q from revision %d, compacted at %d", ErrCompacted, name, next, resp.CompactRevision)})
				return
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					cancel()
					send(ctx, out, Event{Err: fmt.Errorf("%w: %w", ErrCompacted, err)})
					return
				}
				s.log.Debug("watch broken", "service", name, "error", err)
				break
			}
			if next == 0 {
				next = resp.Header.Revision + 1
			}
			for _, ev := range resp.Events {
				if !send(ctx, out, s.event(ev)) {
					cancel()
					return
				}
				next = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		retry.Reset(100 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-retry.C:
		}
	}
}

func (s *Store) event(ev *clientv3.Event) Event {
	rev := ev.Kv.ModRevision
	if ev.Type == clientv3.EventTypeDelete {
		out := Event{Type: EventFree, Revision: rev}
		service, id, _ := s.parseKey(string(ev.Kv.Key))
		out.Endpoint = Endpoint{Service: service, ID: id}
		if ev.PrevKv != nil {
			if e, err := s.decode(ev.PrevKv); err == nil {
				out.Endpoint = e
			}
		}
		out.Endpoint.ModRevision = rev
		return out
	}
	e, err := s.decode(ev.Kv)
	if err != nil {
		return Event{Type: EventRegister, Endpoint: e, Revision: rev, Err: err}
	}
	return Event{Type: EventRegister, Endpoint: e, Revision: rev}
}

// SyncHost makes the instance endpoints of host in etcd equal want: it
// puts each of want bound to lease (skipping those already stored
// unchanged with that lease) and deletes the host's other instance
// endpoints. The agent calls it after (re)registering its host, e.g. with
// a new lease after an etcd outage, and may call it periodically; single
// Put and Delete calls follow instances between syncs. External
// registrations are not touched. It returns how many keys it wrote and
// deleted.
func (s *Store) SyncHost(ctx context.Context, host string, lease clientv3.LeaseID, want []Endpoint) (put, deleted int, err error) {
	resp, err := s.cli.Get(ctx, s.root(), clientv3.WithPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("sync host %s: %w", host, err)
	}
	type stored struct {
		ep    Endpoint
		value string
		lease int64
		rev   int64
	}
	have := map[string]stored{}
	for _, kv := range resp.Kvs {
		e, err := s.decode(kv)
		if err != nil || e.Source != SourceInstance || e.Host != host {
			continue
		}
		have[string(kv.Key)] = stored{ep: e, value: string(kv.Value), lease: kv.Lease, rev: kv.ModRevision}
	}
	wanted := map[string]bool{}
	for _, e := range want {
		if e.Host != host || e.Source != SourceInstance {
			return put, deleted, fmt.Errorf("%w: sync host %s: endpoint %s/%s has host %q, source %q", ErrInvalid, host, e.Service, e.ID, e.Host, e.Source)
		}
		key := s.key(e.Service, e.ID)
		wanted[key] = true
		if old, ok := have[key]; ok && e.Registered.IsZero() {
			e.Registered = old.ep.Registered
		}
		val, err := encode(e)
		if err != nil {
			return put, deleted, err
		}
		if old, ok := have[key]; ok && old.value == val && old.lease == int64(lease) {
			continue
		}
		var opts []clientv3.OpOption
		if lease != 0 {
			opts = append(opts, clientv3.WithLease(lease))
		}
		if _, err := s.cli.Put(ctx, key, val, opts...); err != nil {
			return put, deleted, fmt.Errorf("sync host %s: put %s/%s: %w", host, e.Service, e.ID, err)
		}
		put++
	}
	for key, old := range have {
		if wanted[key] {
			continue
		}
		// Delete only what we read: an endpoint re-put meanwhile stays.
		tr, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", old.rev)).
			Then(clientv3.OpDelete(key)).Commit()
		if err != nil {
			return put, deleted, fmt.Errorf("sync host %s: delete %s/%s: %w", host, old.ep.Service, old.ep.ID, err)
		}
		if tr.Succeeded {
			deleted++
		}
	}
	return put, deleted, nil
}
