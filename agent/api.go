package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/discovery"
)

// SocketName is the file name of the agent's unix socket in its run dir.
const SocketName = "agent.sock"

// apiServer serves the local API on the unix socket and, unless disabled,
// on HTTP(S).
type apiServer struct {
	log       hclog.Logger
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
	s := &apiServer{log: a.log, unixL: newLimitListener(ul, maxConns(a.cfg.HTTPMaxConns), 0, a.log)}
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
			s.log.Error("unix api stopped", "error", err)
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
				s.log.Error("http api stopped", "error", err)
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
	api := a.localAPI()
	mux.HandleFunc("GET /v1/status", api.handleStatus)
	mux.HandleFunc("GET /v1/instances", api.handleInstances)
	mux.HandleFunc("GET /v1/instances/{id}", api.handleInstance)
	mux.HandleFunc("GET /v1/instances/{id}/logs", api.logsHandler(newStreamLimiter(a.cfg.LogStreams, a.cfg.LogStreamsPerClient)))
	mux.HandleFunc("POST /v1/instances/{id}/signal", api.handleSignal)
	deployAPI{reg: a.reg}.routes(mux)
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

// localAPI gives the instance handlers the few values they need of the
// agent.
func (a *Agent) localAPI() *localAPI {
	return &localAPI{
		host: a.cfg.HostID, addr: a.cfg.Addr, version: a.cfg.Version, started: a.started,
		sup: a.sup, log: a.log, leader: a.leaderOf,
		lease: func() (clientv3.LeaseID, bool) {
			if s := a.sess.current(); s != nil {
				return s.Lease(), true
			}
			return 0, false
		},
	}
}
