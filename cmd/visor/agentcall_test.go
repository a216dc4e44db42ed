package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/agent"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testcerts"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// shApp registers app with revision v1 and proc web running the shell line.
func shApp(t *testing.T, r *registry.Registry, app, line string) {
	t.Helper()
	ctx := testContext(t)
	for _, err := range []error{
		err2(r.RegisterApp(ctx, registry.App{Name: app})),
		err2(r.RegisterRevision(ctx, registry.Revision{App: app, Name: "v1", Dir: os.TempDir()})),
		err2(r.SetProcType(ctx, registry.ProcType{App: app, Name: "web", Command: line, StopTimeout: registry.Duration(2 * time.Second)})),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func err2[T any](_ T, err error) error { return err }

// TestLogsFromTLSAgent: an agent serving TLS advertises https in its host
// record; `visor logs` calls it over https, verified with --agent-ca, and
// without that CA says the certificate's authority is unknown instead of
// failing obscurely (issue 14 rows 8 and 10).
func TestLogsFromTLSAgent(t *testing.T) {
	h := newHarness(t)
	r := h.registry()
	certs := testcerts.New(t)
	shApp(t, r, "web", "echo hello-over-tls; exec sleep 3600")
	dir := t.TempDir()
	a, err := agent.New(agent.Config{
		HostID: "tls-host", DataDir: dir, RunDir: filepath.Join(dir, "run"),
		HTTPAddr: "127.0.0.1:0", Token: "s3cret", TLSCertFile: certs.ServerCert, TLSKeyFile: certs.ServerKey,
		TTL: 3 * time.Second, Cgroups: "none", StopOnExit: true,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "tls-host", Level: hclog.Info, Output: io.Discard}),
	}, r)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent Run: %v", err)
			}
		case <-time.After(testtime.Scaled(20 * time.Second)):
			t.Errorf("agent did not stop")
		}
	})
	if _, err := r.Scale(testContext(t), "web", "v1", "web", 1); err != nil {
		t.Fatal(err)
	}
	var id string
	proctest.WaitFor(t, 30*time.Second, "a running instance on the TLS agent", func() bool {
		ins, err := r.AppInstances(testContext(t), "web")
		if err != nil || len(ins) != 1 || ins[0].State != registry.InstanceRunning {
			return false
		}
		id = ins[0].ID
		return true
	})
	host, err := r.Host(testContext(t), "tls-host")
	if err != nil || host.APIScheme != "https" {
		t.Fatalf("host record of a TLS agent: scheme %q, %v; want https", host.APIScheme, err)
	}

	proctest.WaitFor(t, 30*time.Second, "the instance's first line", func() bool {
		res := h.run("logs", id, "--token", "s3cret", "--agent-ca", certs.CA)
		return res.code == 0 && strings.Contains(res.stdout, "hello-over-tls")
	})
	res := h.run("logs", id, "--token", "s3cret")
	if res.code == 0 || !strings.Contains(res.stderr, "unknown authority") || !strings.Contains(res.stderr, "https://"+host.APIAddr) {
		t.Fatalf("logs without the agent's CA: exit %d, stderr %q; want the unknown authority named", res.code, res.stderr)
	}
	if res := h.run("logs", id, "--token", "wrong", "--agent-ca", certs.CA); res.code == 0 {
		t.Fatalf("logs with a wrong token succeeded: %q", res.stdout)
	}
}

// recordingListener records every byte its connections receive.
type recordingListener struct {
	net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, l: l}, nil
}

func (l *recordingListener) received() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type recordingConn struct {
	net.Conn
	l *recordingListener
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.mu.Lock()
	c.l.buf.Write(p[:n])
	c.l.mu.Unlock()
	return n, err
}

// TestTokenNeverInCleartextToTLSAgent: a host record that says http (an
// older or tampered record) for an agent that serves TLS does not make
// the CLI send its token in cleartext: it finds TLS and calls over https.
// The server records the raw bytes it received; the token is not in them.
func TestTokenNeverInCleartextToTLSAgent(t *testing.T) {
	h := newHarness(t)
	r := h.registry()
	certs := testcerts.New(t)
	kp, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingListener{Listener: inner}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.Header.Get("Authorization") != "Bearer s3cret" {
				http.Error(w, `{"error":"missing or wrong bearer token"}`, http.StatusUnauthorized)
				return
			}
			io.WriteString(w, "served over tls\n")
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{kp}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(rec, "", "") }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})

	// An instance on a host whose record says http for that address.
	shApp(t, r, "web", "exec sleep 3600")
	ctx := testContext(t)
	sess, err := r.RegisterHost(ctx, registry.Host{ID: "old-host", APIAddr: inner.Addr().String(), APIScheme: "http"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(context.Background()) })
	if _, err := r.Scale(ctx, "web", "v1", "web", 1); err != nil {
		t.Fatal(err)
	}
	tickets, err := r.Tickets(ctx)
	if err != nil || len(tickets) != 1 {
		t.Fatalf("tickets: %v %v", tickets, err)
	}
	if err := carryOut(ctx, sess, tickets[0]); err != nil {
		t.Fatal(err)
	}
	id := tickets[0].Instance

	res := h.run("logs", id, "--token", "s3cret", "--agent-ca", certs.CA)
	if res.code != 0 || res.stdout != "served over tls\n" {
		t.Fatalf("logs from a TLS agent with an http record: exit %d, %q %q", res.code, res.stdout, res.stderr)
	}
	if got := rec.received(); strings.Contains(got, "s3cret") || strings.Contains(got, "Bearer") {
		t.Fatalf("the token reached the agent in cleartext:\n%q", got)
	}
	// The recorder does see cleartext: a plain request shows its header.
	req, _ := http.NewRequest("GET", "http://"+inner.Addr().String()+"/x", nil)
	req.Header.Set("Authorization", "Bearer probe-token")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	if !strings.Contains(rec.received(), "probe-token") {
		t.Fatal("the recording listener does not see a cleartext request; the check above proves nothing")
	}
}

// TestAgentStartChecksTLSFiles: a missing -tls-cert or -tls-key file fails
// `visor agent` at once, naming the file (issue 14 row 10).
func TestAgentStartChecksTLSFiles(t *testing.T) {
	certs := testcerts.New(t)
	missing := filepath.Join(t.TempDir(), "nope.pem")
	for _, tc := range []struct{ cert, key, want string }{
		{missing, certs.ServerKey, "tls_cert: open " + missing},
		{certs.ServerCert, missing, "tls_key: open " + missing},
	} {
		args := []string{"agent", "-data-dir", t.TempDir(), "-run-dir", t.TempDir(), "-tls-cert", tc.cert, "-tls-key", tc.key}
		checkFailure(t, runCLI(args...), 2, []string{tc.want}, args)
	}
}

// TestHTTPEndpointWithTLSFlags: TLS flags with an http:// etcd endpoint are
// a usage error, not silently ignored (issue 14 row 10).
func TestHTTPEndpointWithTLSFlags(t *testing.T) {
	certs := testcerts.New(t)
	for _, flags := range [][]string{
		{"--ca-file", certs.CA},
		{"--cert-file", certs.ClientCert, "--key-file", certs.ClientKey},
	} {
		args := append([]string{"--endpoints", "127.0.0.1:1,http://127.0.0.1:2", "--timeout", "1s"}, flags...)
		args = append(args, "app", "list")
		checkFailure(t, runCLI(args...), 2, []string{"http://127.0.0.1:2", "is http:// but TLS is configured"}, args)
	}
}
