package registry

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/visorhq/visor/internal/backoff"
)

// DefaultPrefix is the key prefix used when Config.Prefix is empty.
const DefaultPrefix = "/visor/"

// Config configures Dial. The zero value of every field but Endpoints has a
// usable default.
type Config struct {
	// Endpoints are etcd client URLs ("http://127.0.0.1:2379") or host:port
	// pairs. Required.
	Endpoints []string
	// TLS, when set, is used for client connections.
	TLS *tls.Config
	// Username and Password authenticate against etcd auth when set.
	Username, Password string
	// Prefix is prepended to every key. Default "/visor/". A missing
	// trailing slash is added.
	Prefix string
	// DialTimeout bounds connecting. Default 5s.
	DialTimeout time.Duration
	// Logger receives the registry's logs. Default: a null logger.
	Logger hclog.Logger
}

// Registry is a typed client of the Visor registry in etcd. It is safe for
// concurrent use.
type Registry struct {
	cli        *clientv3.Client
	prefix     string
	log        hclog.Logger
	ownsClient bool
	// scaleChunk is the most tickets one Scale transaction writes; 0
	// until a transaction was refused as too large (see scale.go).
	scaleChunk atomic.Int32
}

// reconnect is how the client's connections come back after etcd or the
// network was away. gRPC's default backoff grows to 120 s: after a 10 s
// partition an agent waited 5 s past the heal before it could register
// again (test/fault), after a 60 s outage longer. Attempts at most 2 s
// apart cost nothing while etcd is unreachable and bring a host back
// within about 2 s of its return.
var reconnect = grpc.ConnectParams{
	Backoff: grpcbackoff.Config{
		BaseDelay:  100 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   2 * time.Second,
	},
	MinConnectTimeout: 5 * time.Second,
}

// Dial connects to etcd, verifies that it answers a read under the prefix
// within ctx and DialTimeout, and returns a Registry that owns the client.
func Dial(ctx context.Context, c Config) (*Registry, error) {
	if len(c.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no etcd endpoints", ErrInvalid)
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if err := CheckEndpoints(c.Endpoints, c.TLS != nil); err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints,
		TLS:         c.TLS,
		Username:    c.Username,
		Password:    c.Password,
		DialTimeout: c.DialTimeout,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(reconnect)},
		// Keepalive pings find a connection that a partition left dead
		// (its TCP stream would otherwise wait out retransmission backoff
		// after the heal: requests stalled ~5 s in test/fault). 6 s stays
		// above etcd's default --grpc-keepalive-min-time of 5 s.
		DialKeepAliveTime:    6 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
	})
	if err != nil {
		return nil, errorf("registry: dial %s: %w", strings.Join(c.Endpoints, ","), accessErr(err))
	}
	r := New(cli, c.Prefix, c.Logger)
	r.ownsClient = true
	vctx, cancel := context.WithTimeout(ctx, c.DialTimeout)
	defer cancel()
	if _, err := cli.Get(vctx, r.prefix, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			// The etcd client hides TLS failures and refused connections
			// behind the timeout.
			if cause := probeEndpoints(context.WithoutCancel(ctx), c.Endpoints, c.TLS); cause != nil {
				err = fmt.Errorf("%w (then: %w)", cause, err)
			}
		}
		return nil, errorf("registry: dial %s: %w", strings.Join(c.Endpoints, ","), accessErr(err))
	}
	return r, nil
}

// New wraps an existing client. Close does not close cli. An empty prefix
// means DefaultPrefix; a nil logger means a null logger.
func New(cli *clientv3.Client, prefix string, logger hclog.Logger) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Registry{cli: cli, prefix: prefix, log: logger.Named("registry")}
}

// Close closes the etcd client if Dial created it. Host sessions should be
// closed first.
func (r *Registry) Close() error {
	if !r.ownsClient {
		return nil
	}
	return r.cli.Close()
}

// Client returns the underlying etcd client.
func (r *Registry) Client() *clientv3.Client { return r.cli }

// Prefix returns the key prefix, with its trailing slash.
func (r *Registry) Prefix() string { return r.prefix }

// CurrentRevision returns the current etcd revision, a starting point for
// WatchEvents.
func (r *Registry) CurrentRevision(ctx context.Context) (int64, error) {
	resp, err := r.cli.Get(ctx, r.prefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, errorf("registry: current revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// Keys. See doc.go for the layout.

func (r *Registry) appsDir() string             { return r.prefix + "apps/" }
func (r *Registry) appKey(app string) string    { return r.prefix + "apps/" + app }
func (r *Registry) appDir(app string) string    { return r.prefix + "apps/" + app + "/" }
func (r *Registry) envDir(app string) string    { return r.appDir(app) + "env/" }
func (r *Registry) envKey(app, k string) string { return r.envDir(app) + k }
func (r *Registry) revDir(app string) string    { return r.appDir(app) + "revs/" }
func (r *Registry) revKey(app, rev string) string {
	return r.revDir(app) + rev
}
func (r *Registry) procDir(app string) string { return r.appDir(app) + "procs/" }
func (r *Registry) procKey(app, proc string) string {
	return r.procDir(app) + proc
}
func (r *Registry) scaleDir(app string) string { return r.appDir(app) + "scale/" }
func (r *Registry) scaleKey(app, rev, proc string) string {
	return r.scaleDir(app) + rev + "/" + proc
}
func (r *Registry) genDir(app string) string { return r.prefix + "gen/" + app + "/" }
func (r *Registry) genKey(app, rev, proc string) string {
	return r.genDir(app) + rev + "/" + proc
}
func (r *Registry) ticketsDir() string           { return r.prefix + "tickets/" }
func (r *Registry) ticketKey(id string) string   { return r.ticketsDir() + id }
func (r *Registry) claimsDir() string            { return r.prefix + "claims/" }
func (r *Registry) claimKey(id string) string    { return r.claimsDir() + id }
func (r *Registry) instancesDir() string         { return r.prefix + "instances/" }
func (r *Registry) instanceKey(id string) string { return r.instancesDir() + id }
func (r *Registry) hostsDir() string             { return r.prefix + "hosts/" }
func (r *Registry) hostKey(id string) string     { return r.hostsDir() + id }
func (r *Registry) hostInstanceKey(host, id string) string {
	return r.hostsDir() + host + "/instances/" + id
}

// rel returns key without the registry prefix.
func (r *Registry) rel(key []byte) string { return strings.TrimPrefix(string(key), r.prefix) }

// Validation.

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]*$`)
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	userRE   = regexp.MustCompile(`^([a-z_][a-z0-9_.-]*\$?|[0-9]+)$`)
	hexRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

const maxNameLen = 63

// short quotes v, cut to 40 bytes so a 300-byte name stays readable.
func short(v string) string {
	if len(v) > 40 {
		return fmt.Sprintf("%q...", v[:40])
	}
	return fmt.Sprintf("%q", v)
}

// validName checks an app, revision, process type or host name.
func validName(field, v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, field)
	case len(v) > maxNameLen:
		return fmt.Errorf("%w: %s %s is %d characters, more than %d", ErrInvalid, field, short(v), len(v), maxNameLen)
	case !isName(v):
		return fmt.Errorf("%w: %s %s must match %s", ErrInvalid, field, short(v), nameRE)
	}
	return nil
}

// validLabel checks an app or process type name. Both are DNS labels
// (RFC 1123: 1 to 63 of [a-z0-9-], neither first nor last "-") and hold no
// ".": the service of a process type is "<app>.<proc>", and with dots app
// "a.b" proc "web" and app "a" proc "b.web" were both "a.b.web" (issue 17).
// Revision and host names may hold dots.
func validLabel(field, v string) error {
	if err := validName(field, v); err != nil {
		return err
	}
	switch {
	case strings.IndexByte(v, '.') >= 0:
		return fmt.Errorf("%w: %s %s contains \".\": app and process type names are DNS labels "+
			"([a-z0-9-]), since the service name <app>.<proc> must name one process type", ErrInvalid, field, short(v))
	case v[len(v)-1] == '-':
		return fmt.Errorf("%w: %s %s ends with \"-\", which a DNS label may not", ErrInvalid, field, short(v))
	}
	return nil
}

// validID checks an instance or ticket id: a name that may be longer.
func validID(field, v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, field)
	case len(v) > 3*maxNameLen:
		return fmt.Errorf("%w: %s %s is %d characters, more than %d", ErrInvalid, field, short(v), len(v), 3*maxNameLen)
	case !isName(v):
		return fmt.Errorf("%w: %s %s must match %s", ErrInvalid, field, short(v), nameRE)
	}
	return nil
}

// isName reports whether v matches nameRE, without the regexp: ids are
// checked on every claim and state update.
func isName(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '.' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

func validEnvKey(k string) error {
	if len(k) > 256 || !envKeyRE.MatchString(k) {
		return fmt.Errorf("%w: env key %s must match %s", ErrInvalid, short(k), envKeyRE)
	}
	return nil
}

// validEnv checks an env var: its key a name (so never with "=" or NUL),
// its value without a NUL byte, which no process environment can hold.
func validEnv(k, v string) error {
	if err := validEnvKey(k); err != nil {
		return err
	}
	if strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("%w: env %s: value contains a NUL byte", ErrInvalid, k)
	}
	return nil
}

func validNames(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if err := validName(pairs[i], pairs[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// Encoding.

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own record types are encoded; they always marshal.
		panic(fmt.Sprintf("registry: encode %T: %v", v, err))
	}
	return string(b)
}

// IDs.

var lastTicketNanos atomic.Int64

// newTicketID returns a ticket id that sorts by creation time: 16 hex digits
// of a strictly increasing (per process) nanosecond clock, then 8 random.
func newTicketID() string {
	for {
		now := time.Now().UnixNano()
		last := lastTicketNanos.Load()
		if now <= last {
			now = last + 1
		}
		if lastTicketNanos.CompareAndSwap(last, now) {
			return fmt.Sprintf("%016x%s", now, randHex(4))
		}
	}
}

func newInstanceID(app, proc string) string {
	return app + "-" + proc + "-" + randHex(4)
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("registry: random: %v", err))
	}
	return hex.EncodeToString(b)
}

// Optimistic transactions.

// maxAttempts bounds retries of an optimistic transaction.
const maxAttempts = 100

// conflictBackoff spaces the attempts of an optimistic transaction after
// each conflict, so that competing writers spread out: a random pause of
// 0..2ms after the first conflict, doubling up to 0..20ms.
var conflictBackoff = backoff.Policy{Initial: 2 * time.Millisecond, Max: 20 * time.Millisecond, Jitter: backoff.FullJitter}

// rewatchBackoff spaces the rounds of a watch loop (list, then watch) after
// a watch ended or a read failed: a random 0..20ms, so the watchers of a
// fleet do not all come back at once, and a recovered etcd is followed at
// once. A loop resets it after a round that got a response.
var rewatchBackoff = backoff.Policy{Initial: 20 * time.Millisecond, Max: 20 * time.Millisecond, Jitter: backoff.FullJitter}

// retry runs attempt until it reports done or fails, at most maxAttempts
// times, with a short jittered pause (conflictBackoff) after each conflict.
func retry(ctx context.Context, what string, attempt func() (done bool, err error)) error {
	b := backoff.Backoff{Policy: conflictBackoff}
	for range maxAttempts {
		done, err := attempt()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if err := b.Wait(ctx); err != nil {
			return errorf("%s: %w", what, err)
		}
	}
	return errorf("%s: %w", what, ErrConflict)
}

// exists is a compare that key exists.
func exists(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
}

// absent is a compare that key does not exist.
func absent(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
}

// unchanged is a compare that key's mod revision is rev (0: still absent).
func unchanged(key string, rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", rev)
}

// touch bumps a generation key; only its mod revision matters.
func touch(key string) clientv3.Op { return clientv3.OpPut(key, "") }

// rangeKvs returns the keys read by the i-th operation of a txn, a range.
func rangeKvs(resp *clientv3.TxnResponse, i int) []*mvccpb.KeyValue {
	return resp.Responses[i].GetResponseRange().Kvs
}

func first(kvs []*mvccpb.KeyValue) *mvccpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}

// joinCorrupt collects the decode errors of a listing into one BadRecords
// error (nil when there are none).
func joinCorrupt(errs []error) error { return badRecords(errs) }

// transient reports whether err is an etcd server timeout, after which a
// request may be retried (it may or may not have been applied).
func transient(err error) bool {
	return errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrLeaderChanged)
}
