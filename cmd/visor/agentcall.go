package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/visorhq/visor/registry"
)

// agentClientFlags are the flags of commands that call an agent's API.
func agentClientFlags(fs *pflag.FlagSet) {
	fs.String("token", "", "bearer token of the agents' HTTP API")
	envVar(fs, "token", "VISOR_TOKEN")
	fs.String("agent-ca", "", "CA bundle to verify agents' HTTPS certificates (default: the system's)")
	envVar(fs, "agent-ca", "VISOR_AGENT_CA_FILE")
	fs.String("socket", "", "call the agent on this unix socket (e.g. /run/visor/agent.sock) instead of over HTTP")
}

// agentCall is a resolved agent API endpoint for one instance.
type agentCall struct {
	client *http.Client
	base   string
	token  string
}

// agentFor finds the agent that runs instance id. The scheme comes from the
// agent's host record: https when the agent serves TLS. A record without
// one (an older agent), or one saying http, is checked before a token is
// sent: if the agent answers a TLS handshake, the call goes over https, so
// the token never travels in cleartext to an agent that serves TLS.
func agentFor(ctx context.Context, e *env, id string) (agentCall, error) {
	socket, token := flagString(e, "socket"), flagString(e, "token")
	if socket != "" {
		return agentCall{base: "http://agent", client: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", socket)
			},
		}}}, nil
	}
	tc, err := agentTLSConfig(flagString(e, "agent-ca"))
	if err != nil {
		return agentCall{}, err
	}
	var h registry.Host
	err = withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		in, err := r.Instance(ctx, id)
		if err != nil {
			return err
		}
		if in.Host == "" {
			return fmt.Errorf("instance %s is %s and has no host yet", id, in.State)
		}
		h, err = r.Host(ctx, in.Host)
		if err != nil {
			return fmt.Errorf("host %s of instance %s: %w", in.Host, id, err)
		}
		if h.APIAddr == "" {
			return fmt.Errorf("the agent on host %s serves no HTTP API (use --socket on that host)", in.Host)
		}
		return nil
	})
	if err != nil {
		return agentCall{}, err
	}
	scheme := h.APIScheme
	switch scheme {
	case "https":
	case "http", "":
		if token != "" && speaksTLS(ctx, h.APIAddr) {
			scheme = "https"
		} else {
			scheme = "http"
		}
	default:
		return agentCall{}, fmt.Errorf("host %s: unknown api_scheme %q in its record", h.ID, h.APIScheme)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 10 * time.Second}}
	return agentCall{client: client, base: scheme + "://" + h.APIAddr, token: token}, nil
}

// agentTLSConfig returns the TLS settings for agents: the system's roots,
// or the CA bundle in caFile.
func agentTLSConfig(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("agent-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("agent-ca %s: no PEM certificates", caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// speaksTLS reports whether the server at addr answers a TLS handshake
// (whatever its certificate). Nothing but a ClientHello is sent. It errs
// on the side of TLS: only an answer that is not a TLS record (a plain
// HTTP server's 400) or no answer at all counts as plain, so that an
// unclear case fails the call over https instead of sending the token in
// cleartext.
func speaksTLS(ctx context.Context, addr string) bool {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(pctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer raw.Close()
	err = tls.Client(raw, &tls.Config{InsecureSkipVerify: true}).HandshakeContext(pctx) //nolint:gosec // detection only
	var rh tls.RecordHeaderError
	return err == nil || !errors.As(err, &rh) && pctx.Err() == nil
}

func (c agentCall) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("call agent at %s: %w", c.base, registry.ExplainTLS(err))
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		err := fmt.Errorf("agent: %s", e.Error)
		if resp.StatusCode == http.StatusBadRequest {
			err = asUsage(err)
		}
		return nil, err
	}
	return resp, nil
}
