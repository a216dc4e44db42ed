package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/apierror"
)

type callerKey struct{}

// Caller is who makes a request, as the authenticating middleware in front
// of the handler established it.
type Caller struct {
	// Name is the principal (a token's name, a local user): external
	// registrations are owned by it and counted against its cap.
	Name string
	// Admin callers (operators) may renew and free any registration;
	// others only their own.
	Admin bool
}

// WithCaller returns a context naming the caller of a request. The handler
// never trusts request headers for this: without WithCaller the caller is
// the remote IP address (a handler served without authentication).
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// callerOf names the caller of r for ownership and the per-client cap.
func callerOf(r *http.Request) Caller {
	if c, ok := r.Context().Value(callerKey{}).(Caller); ok && c.Name != "" {
		return c
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return Caller{Name: r.RemoteAddr}
	}
	return Caller{Name: host}
}

// Default caps of watch streams (HandlerConfig).
const (
	// DefaultMaxWatches is the default cap of concurrent watch streams.
	DefaultMaxWatches = 256
	// DefaultMaxWatchesPerCaller is the default cap of one caller's
	// concurrent watch streams.
	DefaultMaxWatchesPerCaller = 16
)

// HandlerConfig configures the HTTP API of service discovery. Zero values
// take the documented defaults.
type HandlerConfig struct {
	// Store is where endpoints are looked up. Required.
	Store *Store
	// Registrar takes external registrations; nil: the write routes
	// answer 501.
	Registrar *Registrar
	// Logger receives request failures. Default: discard.
	Logger hclog.Logger
	// Reserved, when set, is asked before every external registration; a
	// non-nil error refuses it (403 if the error wraps ErrReserved, else
	// the error's class). The agent refuses names that belong to a Visor
	// app, whose instances register themselves.
	Reserved func(ctx context.Context, service string) error
	// MaxWatches caps the watch streams served at once; one more is
	// answered 503. Default DefaultMaxWatches.
	MaxWatches int
	// MaxWatchesPerCaller caps one caller's watch streams; one more is
	// answered 429. Default DefaultMaxWatchesPerCaller.
	MaxWatchesPerCaller int
}

type handler struct {
	store    *Store
	reg      *Registrar
	log      hclog.Logger
	reserved func(context.Context, string) error
	maxW     int
	maxWPer  int

	mu       sync.Mutex // guards watches and byCaller
	watches  int
	byCaller map[string]int
}

// NewHandler returns the HTTP API of service discovery with the default
// HandlerConfig for store, reg and logger; see HandlerConfig.Handler.
func NewHandler(store *Store, reg *Registrar, logger hclog.Logger) http.Handler {
	return HandlerConfig{Store: store, Registrar: reg, Logger: logger}.Handler()
}

// Handler returns the HTTP API of service discovery, routes under
// /v1/services:
//
//	GET    /v1/services                     service names
//	GET    /v1/services/{name}?version=&healthy=1   lookup ({name} may be "name@range")
//	GET    /v1/services/{name}/watch?since=REV&version=   server-sent events (Last-Event-ID resumes)
//	POST   /v1/services/{name}              register {version,address,port,meta,ttl}
//	PUT    /v1/services/{name}/{id}         renew (heartbeat)
//	DELETE /v1/services/{name}/{id}         deregister
//
// Errors are JSON {"error": "..."} with a 4xx status naming the problem
// (400 malformed input, 403 a reserved name or another caller's
// registration, 404 unknown registration, 413 too large, 429 cap reached),
// 503 when the total watch cap is reached, 5xx for etcd failures.
//
// The caller authenticates and authorizes requests and names the caller
// with WithCaller: a registration belongs to the caller that made it, and
// only that caller or an Admin caller may renew or free it.
func (c HandlerConfig) Handler() http.Handler {
	logger := c.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if c.MaxWatches <= 0 {
		c.MaxWatches = DefaultMaxWatches
	}
	if c.MaxWatchesPerCaller <= 0 {
		c.MaxWatchesPerCaller = DefaultMaxWatchesPerCaller
	}
	h := &handler{
		store: c.Store, reg: c.Registrar, log: logger.Named("discovery-http"), reserved: c.Reserved,
		maxW: c.MaxWatches, maxWPer: c.MaxWatchesPerCaller, byCaller: map[string]int{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/services", h.services)
	mux.HandleFunc("GET /v1/services/{name}", h.lookup)
	mux.HandleFunc("GET /v1/services/{name}/watch", h.watch)
	mux.HandleFunc("POST /v1/services/{name}", h.register)
	mux.HandleFunc("PUT /v1/services/{name}/{id}", h.renew)
	mux.HandleFunc("DELETE /v1/services/{name}/{id}", h.free)
	mux.HandleFunc("/v1/services/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

// errorBody is the agent API's one error body (also an SSE error event's).
type errorBody = apierror.Body

// writeError answers status with the agent API's one error body,
// {"error": ..., "code": ...} (internal/apierror).
func writeError(w http.ResponseWriter, status int, err error) {
	apierror.Write(w, status, err.Error())
}

// fail answers err with the status its class calls for.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, ErrInvalid):
		writeError(w, http.StatusBadRequest, err)
	case errors.Is(err, ErrTooLarge), errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, err)
	case errors.Is(err, ErrUnknown):
		writeError(w, http.StatusNotFound, err)
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrReserved):
		writeError(w, http.StatusForbidden, err)
	case errors.Is(err, ErrLimit):
		writeError(w, http.StatusTooManyRequests, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, err)
	default:
		h.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		writeError(w, http.StatusInternalServerError, err)
	}
}

// LookupResponse is the body of GET /v1/services/{name}.
type LookupResponse struct {
	Service   string     `json:"service"`
	Version   string     `json:"version,omitempty"`
	Revision  int64      `json:"revision"`
	Endpoints []Endpoint `json:"endpoints"`
}

func (h *handler) services(w http.ResponseWriter, r *http.Request) {
	names, err := h.store.Services(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if names == nil {
		names = []string{}
	}
	writeJSON(w, http.StatusOK, map[string][]string{"services": names})
}

// nameAndVersion reads {name}, which may carry "@range", and ?version=.
func nameAndVersion(r *http.Request) (string, string, error) {
	name, version := SplitNameVersion(r.PathValue("name"))
	if q := r.URL.Query().Get("version"); q != "" {
		if version != "" && version != q {
			return "", "", fmt.Errorf("%w: version given twice: %q in the path, %q in the query", ErrInvalid, version, q)
		}
		version = q
	}
	if err := ValidateName(name); err != nil {
		return "", "", err
	}
	return name, version, nil
}

func parseBool(r *http.Request, key string) (bool, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%w: %s=%q: want a boolean", ErrInvalid, key, v)
	}
	return b, nil
}

func (h *handler) lookup(w http.ResponseWriter, r *http.Request) {
	name, version, err := nameAndVersion(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	healthy, err := parseBool(r, "healthy")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	eps, rev, err := h.store.LookupRevision(r.Context(), name, version, healthy)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if h.reg != nil {
		for i := range eps {
			if eps[i].Source == SourceExternal {
				if held, ok := h.reg.Registration(eps[i].ID); ok {
					eps[i].Expires = held.Expires
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, LookupResponse{Service: name, Version: version, Revision: rev, Endpoints: eps})
}

// RegisterRequest is the body of POST /v1/services/{name}.
type RegisterRequest struct {
	// Version of the registering process; may also come as "name@version"
	// in the path.
	Version string `json:"version,omitempty"`
	// Address clients connect to; default: the request's remote IP.
	Address string `json:"address,omitempty"`
	// Port, 1-65535.
	Port int `json:"port"`
	// Meta is free-form metadata, at most MaxMetaBytes (keys + values).
	Meta map[string]string `json:"meta,omitempty"`
	// TTL is a Go duration ("30s") or a number of seconds; default 30s.
	TTL TTL `json:"ttl,omitzero"`
}

// TTL is a duration in JSON as a Go duration string ("30s") or a number of
// seconds.
type TTL time.Duration

// MarshalJSON writes the TTL as a duration string.
func (t TTL) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(t).String()) }

// UnmarshalJSON reads "30s" or 30.
func (t *TTL) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%w: ttl %q: %w", ErrInvalid, s, err)
		}
		*t = TTL(d)
		return nil
	}
	var secs float64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("%w: ttl %s: want \"30s\" or a number of seconds", ErrInvalid, b)
	}
	*t = TTL(time.Duration(secs * float64(time.Second)))
	return nil
}

// Registration is the answer to register and renew: the endpoint, its
// TTL and how often to renew (TTL/3).
type Registration struct {
	Endpoint
	TTL        TTL `json:"ttl"`
	RenewEvery TTL `json:"renew_every"`
}

func (h *handler) registration(ep Endpoint) Registration {
	ttl := time.Until(ep.Expires).Round(100 * time.Millisecond)
	return Registration{Endpoint: ep, TTL: TTL(ttl), RenewEvery: TTL(ttl / 3)}
}

func (h *handler) maxBody() int64 { return int64(h.reg.cfg.MaxMetaBytes) + 4096 }

func (h *handler) register(w http.ResponseWriter, r *http.Request) {
	if h.reg == nil {
		writeError(w, http.StatusNotImplemented, errors.New("registration is not enabled on this agent"))
		return
	}
	e, ttl, err := decodeRegister(w, r, h.maxBody())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if h.reserved != nil {
		if err := h.reserved(r.Context(), e.Service); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	ep, err := h.reg.Register(r.Context(), callerOf(r).Name, e, ttl)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/services/"+e.Service+"/"+ep.ID)
	writeJSON(w, http.StatusCreated, h.registration(ep))
}

// decodeRegister reads a registration request: the service name (and
// optional "@version") from the path, a RegisterRequest body of at most
// maxBody bytes (w, which may be nil, is told to close the connection
// when it is over), the address defaulting to the remote IP. It checks the
// shape of the request; the Registrar checks the values (port, TTL range,
// metadata). Errors wrap ErrInvalid or ErrTooLarge.
func decodeRegister(w http.ResponseWriter, r *http.Request, maxBody int64) (Endpoint, time.Duration, error) {
	name, version := SplitNameVersion(r.PathValue("name"))
	if err := ValidateName(name); err != nil {
		return Endpoint{}, 0, err
	}
	var req RegisterRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return Endpoint{}, 0, fmt.Errorf("%w: request body over %d bytes", ErrTooLarge, mbe.Limit)
		}
		if errors.Is(err, ErrInvalid) {
			return Endpoint{}, 0, err
		}
		return Endpoint{}, 0, fmt.Errorf("%w: request body: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return Endpoint{}, 0, fmt.Errorf("%w: request body over %d bytes", ErrTooLarge, mbe.Limit)
		}
		return Endpoint{}, 0, fmt.Errorf("%w: request body: data after the JSON object", ErrInvalid)
	}
	if req.Version != "" && version != "" && req.Version != version {
		return Endpoint{}, 0, fmt.Errorf("%w: version given twice: %q in the path, %q in the body", ErrInvalid, version, req.Version)
	}
	if req.Version != "" {
		version = req.Version
	}
	addr := req.Address
	if addr == "" {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil || net.ParseIP(host) == nil {
			return Endpoint{}, 0, fmt.Errorf("%w: address missing and the remote address %q is not an IP", ErrInvalid, r.RemoteAddr)
		}
		addr = host
	}
	if req.TTL < 0 {
		return Endpoint{}, 0, fmt.Errorf("%w: ttl %v is negative", ErrInvalid, time.Duration(req.TTL))
	}
	return Endpoint{Service: name, Version: version, Addr: addr, Port: req.Port, Meta: req.Meta}, time.Duration(req.TTL), nil
}

// held checks that {id} is a registration of {name} held here and that the
// caller may change it: its owner or an Admin caller.
func (h *handler) held(r *http.Request) (string, error) {
	name, id := r.PathValue("name"), r.PathValue("id")
	if err := ValidateName(name); err != nil {
		return "", err
	}
	ep, owner, ok := h.reg.registration(id)
	if !ok || ep.Service != name {
		return "", fmt.Errorf("%w: %q of service %q", ErrUnknown, id, name)
	}
	if c := callerOf(r); !c.Admin && c.Name != owner {
		return "", fmt.Errorf("%w: registration %q of service %q was made by another client; only it or an operator may renew or free it", ErrForbidden, id, name)
	}
	return id, nil
}

func (h *handler) renew(w http.ResponseWriter, r *http.Request) {
	if h.reg == nil {
		writeError(w, http.StatusNotImplemented, errors.New("registration is not enabled on this agent"))
		return
	}
	id, err := h.held(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ep, err := h.reg.Renew(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, h.registration(ep))
}

func (h *handler) free(w http.ResponseWriter, r *http.Request) {
	if h.reg == nil {
		writeError(w, http.StatusNotImplemented, errors.New("registration is not enabled on this agent"))
		return
	}
	id, err := h.held(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if err := h.reg.Free(r.Context(), id); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
