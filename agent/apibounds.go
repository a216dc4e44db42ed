package agent

import (
	"fmt"
	"github.com/visorhq/visor/internal/apierror"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// Bounds of the local API's HTTP servers (issue 14, rows 4 and 9: 4 000
// idle connections were held until the agent ran out of descriptors, and 20
// log requests took it from 87 MB to 1.69 GB).
const (
	// apiReadHeaderTimeout bounds reading a request's header, including
	// the wait for the first one on a new connection.
	apiReadHeaderTimeout = 10 * time.Second
	// apiReadTimeout bounds reading a whole request (bodies are small).
	apiReadTimeout = 30 * time.Second
	// streamWriteTimeout is how long one write of a streaming response may
	// block on a client that does not read.
	streamWriteTimeout = 30 * time.Second
	// apiMaxHeaderBytes caps a request's header.
	apiMaxHeaderBytes = 64 << 10
)

// apiWriteTimeout bounds writing the response of a non-streaming route.
// Streaming routes (logs, event streams) replace it with
// streamWriteTimeout per write. A variable for tests only.
var apiWriteTimeout = 30 * time.Second

// Defaults of the Config fields that bound the API.
const (
	DefaultLogStreams            = 64
	DefaultLogStreamsPerClient   = 8
	DefaultHTTPMaxConns          = 1024
	DefaultHTTPMaxConnsPerClient = 64
	DefaultHTTPIdleTimeout       = 60 * time.Second
)

// maxConns returns the connection cap of one listener: configured, but
// never more than half the process's descriptor limit, so that connections
// alone cannot take the descriptors instances, log files and etcd need.
func maxConns(configured int) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur > 0 {
		if half := lim.Cur / 2; half < uint64(configured) {
			return max(int(half), 1)
		}
	}
	return configured
}

// newAPIServer returns an http.Server with the API's timeouts and header
// limit. idle is the keep-alive idle timeout; a new connection must send
// its first header within min(idle, apiReadHeaderTimeout).
func newAPIServer(h http.Handler, idle time.Duration) *http.Server {
	return &http.Server{
		Handler:           withStreamDeadlines(apierror.Handler(h)),
		ReadHeaderTimeout: min(idle, apiReadHeaderTimeout),
		ReadTimeout:       apiReadTimeout,
		WriteTimeout:      apiWriteTimeout,
		IdleTimeout:       idle,
		MaxHeaderBytes:    apiMaxHeaderBytes,
	}
}

// isStreaming reports whether r asks for a streaming response: logs (its
// history may be long, and it may follow), a service watch (server-sent
// events), or any request accepting an event stream.
func isStreaming(r *http.Request) bool {
	p := r.URL.Path
	switch {
	case r.Method != http.MethodGet:
		return false
	case strings.HasPrefix(p, "/v1/instances/") && strings.HasSuffix(p, "/logs"),
		strings.HasPrefix(p, "/v1/services/") && strings.HasSuffix(p, "/watch"):
		return true
	}
	return r.Header.Get("Accept") == "text/event-stream"
}

// withStreamDeadlines lifts the server's whole-request read and write
// deadlines from streaming requests and bounds each of their writes by
// streamWriteTimeout instead, so that a stream may last as long as its
// client reads it, and no longer than streamWriteTimeout past the point
// where it stops reading.
func withStreamDeadlines(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isStreaming(r) {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Time{})
		_ = rc.SetWriteDeadline(time.Time{})
		next.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: rc}, r)
	})
}

// deadlineWriter sets a write deadline before every write and flush.
type deadlineWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	return d.ResponseWriter.Write(p)
}

// Flush flushes the response with a write deadline.
func (d *deadlineWriter) Flush() {
	_ = d.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	_ = d.rc.Flush()
}

// Unwrap gives http.ResponseController the underlying writer.
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// clientKey names the client of r for per-client limits: the principal
// the request is served for (a bearer token's name, wherever its holder
// connects from, or "uid:N" for a unix socket peer), else the remote IP
// (the "anonymous" operator of -insecure-http), else "local".
func clientKey(r *http.Request) string {
	if p, ok := r.Context().Value(principalKey{}).(principal); ok && p.name != "" && p.name != anonymousPrincipal {
		if strings.HasPrefix(p.name, "uid:") {
			return p.name
		}
		return "token:" + p.name
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil && host != "" {
		return host
	}
	return "local"
}

// streamLimiter caps concurrent streams in total and per client.
type streamLimiter struct {
	total, perClient int

	mu sync.Mutex // guards n and by
	n  int
	by map[string]int
}

func newStreamLimiter(total, perClient int) *streamLimiter {
	return &streamLimiter{total: total, perClient: perClient, by: map[string]int{}}
}

// acquire takes a slot for client, or returns an error message naming the
// limit that is reached. release gives the slot back; call it once.
func (l *streamLimiter) acquire(client string) (release func(), refused string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.by[client] >= l.perClient:
		return nil, fmt.Sprintf("too many concurrent log streams from this client (%s): limit %d per client; close one and retry", client, l.perClient)
	case l.n >= l.total:
		return nil, fmt.Sprintf("too many concurrent log streams on this agent: limit %d; retry later", l.total)
	}
	l.n++
	l.by[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			l.n--
			if l.by[client]--; l.by[client] <= 0 {
				delete(l.by, client)
			}
			l.mu.Unlock()
		})
	}, ""
}

// limitListener accepts at most max connections at once, and at most
// perClient (if > 0) from one remote IP; a connection beyond either is
// closed as soon as it is accepted, so it holds a descriptor for a moment
// only and the accept queue keeps moving (a blocking cap, like
// netutil.LimitListener, would let idle connections lock everyone out).
type limitListener struct {
	net.Listener
	max, perClient int
	log            hclog.Logger

	mu       sync.Mutex // guards n, by, accepted, rejected and lastWarn
	n        int
	by       map[string]int
	accepted int
	rejected int
	lastWarn time.Time
}

func newLimitListener(l net.Listener, max, perClient int, log hclog.Logger) *limitListener {
	return &limitListener{Listener: l, max: max, perClient: perClient, log: log, by: map[string]int{}}
}

// Accept returns the next connection within the limits.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := ""
		if l.perClient > 0 {
			if host, _, err := net.SplitHostPort(c.RemoteAddr().String()); err == nil {
				key = host
			}
		}
		l.mu.Lock()
		if l.n >= l.max || (key != "" && l.by[key] >= l.perClient) {
			l.rejected++
			warn := time.Since(l.lastWarn) > time.Minute
			if warn {
				l.lastWarn = time.Now()
			}
			rejected, n, from := l.rejected, l.n, l.by[key]
			l.mu.Unlock()
			c.Close()
			if warn {
				l.log.Warn("api connection refused: limit reached", "remote", c.RemoteAddr().String(), "open", n, "open_from_client", from,
					"max", l.max, "max_per_client", l.perClient, "refused_total", rejected)
			}
			continue
		}
		l.n++
		l.accepted++
		if key != "" {
			l.by[key]++
		}
		l.mu.Unlock()
		return &limitConn{Conn: c, l: l, key: key}, nil
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	key  string
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.n--
		if c.key != "" {
			if c.l.by[c.key]--; c.l.by[c.key] <= 0 {
				delete(c.l.by, c.key)
			}
		}
		c.l.mu.Unlock()
	})
	return err
}

// conns returns the number of connections held now, and accepted and
// refused so far.
func (l *limitListener) conns() (open, accepted, refused int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, l.accepted, l.rejected
}

// registerConnMetrics exports the connections held and refused by each
// listener (visor_agent_api_connections{listener=...},
// visor_agent_api_connections_accepted_total{listener=...} and
// visor_agent_api_connections_refused_total{listener=...}). A second Run of
// the same Agent keeps the first registration.
func (a *Agent) registerConnMetrics(ls map[string]*limitListener) {
	for name, l := range ls {
		labels := prometheus.Labels{"listener": name}
		_ = a.metrics.reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "visor_agent_api_connections", Help: "API connections held open.", ConstLabels: labels,
		}, func() float64 { n, _, _ := l.conns(); return float64(n) }))
		_ = a.metrics.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "visor_agent_api_connections_accepted_total", Help: "API connections accepted within the limits.", ConstLabels: labels,
		}, func() float64 { _, n, _ := l.conns(); return float64(n) }))
		_ = a.metrics.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "visor_agent_api_connections_refused_total", Help: "API connections closed at accept because a connection limit was reached.", ConstLabels: labels,
		}, func() float64 { _, _, n := l.conns(); return float64(n) }))
	}
}

// apiScheme is the scheme of the HTTP API for the host record: "https"
// when it serves TLS, "http" otherwise, "" when there is none. CLIs use it
// to call the agent with TLS, never sending a token in cleartext to it.
func apiScheme(cfg Config) string {
	switch {
	case cfg.DisableHTTP:
		return ""
	case cfg.TLSCertFile != "":
		return "https"
	default:
		return "http"
	}
}
