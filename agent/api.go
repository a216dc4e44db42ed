package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/visorhq/visor/internal/apierror"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/supervisor/logfile"
)

// SocketName is the file name of the agent's unix socket in its run dir.
const SocketName = "agent.sock"

// apiServer serves the local API on the unix socket and, unless disabled,
// on HTTP(S).
type apiServer struct {
	a         *Agent
	unixL     net.Listener
	httpL     net.Listener
	unixSrv   *http.Server
	httpSrv   *http.Server
	tlsConfig bool
}

// listen opens the API listeners. The socket is mode 0660, owned by the
// agent's user and Config.SocketGroup, so that only they may connect; each
// connection's peer credentials name its principal (see auth.go). Both
// servers have the timeouts and limits of apibounds.go; the TLS key pair is
// loaded here, so that a bad one fails the start with its path named.
func (a *Agent) listen() (*apiServer, error) {
	au, err := newAuthenticator(a.cfg)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.auth = au
	if err := checkRunDir(a.cfg.RunDir); err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	if a.cfg.TLSCertFile != "" && !a.cfg.DisableHTTP {
		cert, err := tls.LoadX509KeyPair(a.cfg.TLSCertFile, a.cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("agent: tls_cert %s, tls_key %s: %w", a.cfg.TLSCertFile, a.cfg.TLSKeyFile, err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	sock := filepath.Join(a.cfg.RunDir, SocketName)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agent: remove stale socket: %w", err)
	}
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("agent: listen on %s: %w", sock, err)
	}
	if err := secureSocket(sock, au.owner, au.group); err != nil {
		ul.Close()
		return nil, err
	}
	s := &apiServer{a: a, unixL: newLimitListener(ul, maxConns(a.cfg.HTTPMaxConns), 0, a.log)}
	mux := a.routes()
	s.unixSrv = newAPIServer(a.authUnix(mux), a.cfg.HTTPIdleTimeout)
	s.unixSrv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return unixConnContext(ctx, c)
	}
	if a.cfg.DisableHTTP {
		a.registerConnMetrics(map[string]*limitListener{"unix": s.unixL.(*limitListener)})
	}
	if !a.cfg.DisableHTTP {
		hl, err := net.Listen("tcp", a.cfg.HTTPAddr)
		if err != nil {
			ul.Close()
			return nil, fmt.Errorf("agent: listen on http_addr %s: %w", a.cfg.HTTPAddr, err)
		}
		s.httpL = newLimitListener(hl, maxConns(a.cfg.HTTPMaxConns), a.cfg.HTTPMaxConnsPerClient, a.log)
		a.mu.Lock()
		a.httpAddr = hl.Addr().String()
		a.mu.Unlock()
		s.httpSrv = newAPIServer(a.authHTTP(mux), a.cfg.HTTPIdleTimeout)
		s.httpSrv.TLSConfig = tlsCfg
		s.tlsConfig = tlsCfg != nil
		a.registerConnMetrics(map[string]*limitListener{"unix": s.unixL.(*limitListener), "http": s.httpL.(*limitListener)})
		a.log.Info("http api listening", "addr", hl.Addr().String(), "tls", s.tlsConfig, "tokens", len(au.tokens),
			"max_conns", maxConns(a.cfg.HTTPMaxConns), "max_conns_per_client", a.cfg.HTTPMaxConnsPerClient, "idle_timeout", a.cfg.HTTPIdleTimeout)
		if au.insecure {
			a.log.Warn("http api serves WITHOUT authentication: every local user is an operator (insecure_http; for development only)", "addr", hl.Addr().String())
		}
	}
	return s, nil
}

// HTTPAddr returns the bound HTTP address (useful with port 0), or "".
func (s *apiServer) HTTPAddr() string {
	if s.httpL == nil {
		return ""
	}
	return s.httpL.Addr().String()
}

// serve serves until ctx ends, then shuts the servers down (followers of
// logs are cut off by the shutdown's base context).
func (s *apiServer) serve(ctx context.Context) {
	var wg sync.WaitGroup
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	s.unixSrv.BaseContext = func(net.Listener) context.Context { return base }
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.unixSrv.Serve(s.unixL); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.a.log.Error("unix api stopped", "error", err)
		}
	}()
	if s.httpSrv != nil {
		s.httpSrv.BaseContext = func(net.Listener) context.Context { return base }
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if s.tlsConfig {
				err = s.httpSrv.ServeTLS(s.httpL, "", "")
			} else {
				err = s.httpSrv.Serve(s.httpL)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.a.log.Error("http api stopped", "error", err)
			}
		}()
	}
	<-ctx.Done()
	cancelBase()
	sctx, cancel := context.WithTimeout(context.Background(), apiShutdownTimeout)
	defer cancel()
	for _, srv := range []*http.Server{s.unixSrv, s.httpSrv} {
		if srv != nil && srv.Shutdown(sctx) != nil {
			_ = srv.Close() // requests still running past the bound are cut
		}
	}
	wg.Wait()
}

func (a *Agent) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /v1/status", a.handleStatus)
	mux.HandleFunc("GET /v1/instances", a.handleInstances)
	mux.HandleFunc("GET /v1/instances/{id}", a.handleInstance)
	mux.HandleFunc("GET /v1/instances/{id}/logs", a.logsHandler(newStreamLimiter(a.cfg.LogStreams, a.cfg.LogStreamsPerClient)))
	mux.HandleFunc("POST /v1/instances/{id}/signal", a.handleSignal)
	a.deployRoutes(mux)
	services := discovery.HandlerConfig{
		Store: a.services, Registrar: a.registrar, Logger: a.cfg.Logger, Reserved: a.reservedService,
	}.Handler()
	mux.Handle("/v1/services", services)
	mux.Handle("/v1/services/", services)
	mux.Handle("/ui/", a.uiHandler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	if a.cfg.EnablePprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Status is the body of GET /v1/status.
type Status struct {
	Host       string         `json:"host"`
	Addr       string         `json:"addr"`
	Version    string         `json:"version"`
	Connected  bool           `json:"connected"`
	Lease      string         `json:"lease,omitempty"`
	Leader     string         `json:"leader,omitempty"`
	CgroupMode string         `json:"cgroup_mode"`
	Uptime     string         `json:"uptime"`
	Instances  map[string]int `json:"instances"`
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	st := Status{
		Host:       a.cfg.HostID,
		Addr:       a.cfg.Addr,
		Version:    a.cfg.Version,
		CgroupMode: a.sup.CgroupMode(),
		Uptime:     time.Since(a.started).Round(time.Second).String(),
		Instances:  map[string]int{},
	}
	if s := a.currentSession(); s != nil {
		st.Connected = true
		st.Lease = fmt.Sprintf("%x", int64(s.Lease()))
		st.Leader = a.leaderOf(r.Context())
	}
	for _, in := range a.sup.List() {
		st.Instances[string(in.State)]++
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *Agent) handleInstances(w http.ResponseWriter, r *http.Request) {
	list := statusesWithUsage(a.sup)
	if list == nil {
		list = []supervisor.Status{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *Agent) handleInstance(w http.ResponseWriter, r *http.Request) {
	st, ok := a.sup.Status(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no instance %q on this host", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// logsHandler serves GET /v1/instances/{id}/logs?stream=stdout|stderr|all&tail=N&follow=1.
// stream defaults to stdout; all merges both files (logfile.StreamMerged):
// each line labelled "stdout | " or "stderr | ", the last tail lines of
// stdout, then of stderr, then followed lines of both in the order they
// are read. A merged stream counts as one stream against limit.
// tail is at most maxTail (100000) lines; a larger value is rejected with
// 400 rather than clamped, so a client never mistakes a cut answer for the
// whole log. The lines are streamed from the file (logfile.Options.Stream),
// never held whole; at most limit's streams run at once (429 beyond); a
// stream ends when its client goes (the request's context, or a write that
// fails or blocks longer than streamWriteTimeout).
func (a *Agent) logsHandler(limit *streamLimiter) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if !a.sup.Has(id) {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no instance %q on this host", id))
			return
		}
		q := r.URL.Query()
		stream := q.Get("stream")
		if stream == "" {
			stream = "stdout"
		}
		if stream != "stdout" && stream != "stderr" && stream != "all" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("stream must be stdout, stderr or all, not %q", stream))
			return
		}
		const maxTail = 100000
		tail := 100
		if v := q.Get("tail"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > maxTail {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("tail must be an integer from 0 to %d, not %q", maxTail, v))
				return
			}
			tail = n
		}
		follow := q.Get("follow") == "1" || q.Get("follow") == "true"
		release, refused := limit.acquire(clientKey(r))
		if refused != "" {
			w.Header().Set("Retry-After", "5")
			writeError(w, http.StatusTooManyRequests, refused)
			return
		}
		defer release()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		out := io.Writer(w)
		if follow {
			fw := &flushWriter{w: w}
			fw.flush() // the client sees the headers before the first line
			out = fw
		}
		var err error
		if stream == "all" {
			srcs := []logfile.Source{{Label: "stdout", Path: a.sup.LogPath(id, "stdout")}, {Label: "stderr", Path: a.sup.LogPath(id, "stderr")}}
			err = logfile.Options{}.StreamMerged(r.Context(), srcs, tail, follow, out)
		} else {
			path := a.sup.LogPath(id, stream)
			err = logfile.Options{}.Stream(r.Context(), path, tail, follow, out)
			if errors.Is(err, os.ErrNotExist) && follow {
				// No output yet: wait for the file, then stream all of it.
				err = logfile.Follow(r.Context(), path, false, out)
			}
		}
		switch {
		case err == nil, r.Context().Err() != nil, errors.Is(err, os.ErrNotExist):
		default:
			a.log.Debug("log stream ended", "instance", id, "error", err)
		}
	}
}

// flushWriter flushes after every write so followed logs arrive at once
// (the log streamer writes a whole chunk at a time).
type flushWriter struct{ w http.ResponseWriter }

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, http.NewResponseController(f.w).Flush()
}

func (f *flushWriter) flush() {
	_ = http.NewResponseController(f.w).Flush()
}

// SignalRequest is the body of POST /v1/instances/{id}/signal.
type SignalRequest struct {
	Signal string `json:"signal"`
}

func (a *Agent) handleSignal(w http.ResponseWriter, r *http.Request) {
	req, err := decodeSignalRequest(w, r)
	if err != nil {
		apierror.WriteCode(w, http.StatusBadRequest, "invalid_body", `body must be JSON {"signal": "HUP"}: `+err.Error())
		return
	}
	err = a.sup.Signal(r.PathValue("id"), req.Signal)
	switch {
	case errors.Is(err, supervisor.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, supervisor.ErrInvalidSpec):
		apierror.WriteCode(w, http.StatusBadRequest, "invalid_signal", err.Error())
	case err != nil:
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeJSON(w, http.StatusOK, map[string]string{"instance": r.PathValue("id"), "signal": req.Signal})
	}
}

// decodeSignalRequest reads one SignalRequest of at most 1 KiB, refusing
// unknown fields, anything after it and an empty signal.
func decodeSignalRequest(w http.ResponseWriter, r *http.Request) (SignalRequest, error) {
	var req SignalRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, err
	}
	if dec.More() {
		return req, errors.New("data after the JSON object")
	}
	if req.Signal == "" {
		return req, errors.New("signal is empty")
	}
	return req, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// writeError answers code with the API's one error body,
// {"error": msg, "code": ...} (internal/apierror).
func writeError(w http.ResponseWriter, code int, msg string) {
	apierror.Write(w, code, msg)
}
