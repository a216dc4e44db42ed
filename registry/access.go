package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrPermission reports that etcd refused an operation to the configured
// user (RBAC: a role without write access to the prefix, or failed
// authentication). It is not an outage: retrying does not help.
var ErrPermission = errors.New("registry: permission denied by etcd")

// ErrUnreachable reports that no etcd endpoint accepted a connection
// (refused, no route, timed out): nothing serves there, as opposed to an
// etcd that answered badly.
var ErrUnreachable = errors.New("no endpoint accepts connections")

// accessErr wraps err with ErrPermission when etcd refused it for lack of
// permission or authentication, and returns it unchanged otherwise.
func accessErr(err error) error {
	if err == nil || errors.Is(err, ErrPermission) {
		return err
	}
	var ee rpctypes.EtcdError
	switch {
	case errors.As(err, &ee) && (ee.Code() == codes.PermissionDenied || ee.Code() == codes.Unauthenticated),
		errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrGRPCAuthFailed),
		status.Code(err) == codes.PermissionDenied,
		status.Code(err) == codes.Unauthenticated:
		return fmt.Errorf("%w (the etcd user needs read and write access to the prefix): %w", ErrPermission, err)
	}
	return err
}

// CheckEndpoints refuses an http:// endpoint when TLS is configured: the
// etcd client would silently connect without TLS there (issue 14 row 10).
func CheckEndpoints(endpoints []string, withTLS bool) error {
	if !withTLS {
		return nil
	}
	for _, ep := range endpoints {
		if strings.HasPrefix(strings.ToLower(ep), "http://") {
			return fmt.Errorf("%w: endpoint %s is http:// but TLS is configured (CA, certificate or key given); use https:// or drop the TLS settings", ErrInvalid, ep)
		}
	}
	return nil
}

// probeEndpoints explains why etcd did not answer within the dial timeout
// (the etcd client reports only "context deadline exceeded"): it connects
// to each endpoint and, with cfg, performs a TLS handshake, or, without
// cfg, checks whether the endpoint speaks TLS. It returns the first TLS
// cause found; else, when no endpoint accepts a connection at all, their
// dial errors (connection refused, no route, a timeout); else nil.
func probeEndpoints(ctx context.Context, endpoints []string, cfg *tls.Config) error {
	var unreachable []error
	for _, ep := range endpoints {
		host := ep
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			host = u.Host
		}
		dialErr, tlsErr := probeOne(ctx, host, cfg)
		if tlsErr != nil {
			return fmt.Errorf("endpoint %s: %w", ep, tlsErr)
		}
		if dialErr != nil {
			unreachable = append(unreachable, dialErr)
		}
	}
	if len(unreachable) > 0 && len(unreachable) == len(endpoints) {
		return fmt.Errorf("%w: %w", ErrUnreachable, errors.Join(unreachable...))
	}
	return nil
}

// probeOne connects to hostport: dialErr is why it could not, tlsErr the
// TLS problem found once connected.
func probeOne(ctx context.Context, hostport string, cfg *tls.Config) (dialErr, tlsErr error) {
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(pctx, "tcp", hostport)
	if err != nil {
		return err, nil
	}
	return nil, probeTLS(pctx, raw, hostport, cfg)
}

// probeTLS returns the TLS problem of the connection raw to hostport: a
// failed handshake with cfg, or, without cfg, a server that speaks TLS.
func probeTLS(pctx context.Context, raw net.Conn, hostport string, cfg *tls.Config) error {
	defer raw.Close()
	if dl, ok := pctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	c := cfg.Clone()
	if c == nil {
		// No TLS configured: does the endpoint speak TLS anyway?
		c = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // only detects TLS, sends nothing
		// Only a completed handshake or a TLS alert proves TLS: a plain
		// server that just closes the connection must not be taken for one.
		if err := tls.Client(raw, c).HandshakeContext(pctx); err == nil || isRemoteAlert(err) {
			return errors.New("etcd serves TLS but no TLS settings were given (CA file, client certificate)")
		}
		return nil
	}
	if c.ServerName == "" {
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			c.ServerName = h
		}
	}
	tc := tls.Client(raw, c)
	if err := tc.HandshakeContext(pctx); err != nil {
		return ExplainTLS(err)
	}
	// With TLS 1.3 a server refuses a client certificate after the
	// client's side of the handshake is done: the alert comes on read.
	tc.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := tc.Read(make([]byte, 1)); isRemoteAlert(err) {
		return ExplainTLS(err)
	}
	return nil
}

// isRemoteAlert reports whether err is a TLS alert sent by the peer.
func isRemoteAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// ExplainTLS returns err with a plain statement of its TLS cause in front
// (unknown CA, wrong host name, expired certificate, client certificate
// refused, peer not speaking TLS), or err unchanged when it is not a TLS
// error. The agent's and the CLI's callers use it for etcd and agent
// connections alike.
func ExplainTLS(err error) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		alert    tls.AlertError
	)
	var cause string
	switch {
	case err == nil:
		return nil
	case errors.As(err, &unknown):
		cause = "the server's certificate is signed by an unknown authority (give the CA that signed it)"
	case errors.As(err, &hostname):
		cause = fmt.Sprintf("the server's certificate is not valid for the name %q that was dialled", hostname.Host)
	case errors.As(err, &invalid):
		cause = "the server's certificate is not valid (expired, not yet valid, or not for server use)"
	case errors.As(err, &record):
		cause = "the server does not speak TLS (is it plain http?)"
	case errors.As(err, &alert), isRemoteAlert(err):
		cause = "the server refused the TLS handshake (client certificate missing, unknown to it or wrong)"
	default:
		return err
	}
	return fmt.Errorf("TLS: %s: %w", cause, err)
}

// Unavailable reports whether err is etcd not answering for now (no
// leader, a leader change, a request timed out in the cluster, no
// connection) rather than an answer about the request. A caller may try
// the same request again later; a failure like this says nothing about
// the request or the host that sent it, so the agent gives a ticket that
// failed this way back without counting an attempt.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	for _, e := range []error{
		rpctypes.ErrLeaderChanged, rpctypes.ErrGRPCLeaderChanged,
		rpctypes.ErrNoLeader, rpctypes.ErrGRPCNoLeader,
		rpctypes.ErrTimeout, rpctypes.ErrGRPCTimeout,
		rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrGRPCTimeoutDueToLeaderFail,
		rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrGRPCTimeoutDueToConnectionLost,
		rpctypes.ErrTimeoutWaitAppliedIndex, rpctypes.ErrGRPCTimeoutWaitAppliedIndex,
		rpctypes.ErrNotCapable, rpctypes.ErrGRPCNotCapable,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) && ee.Code() == codes.Unavailable {
		return true
	}
	return status.Code(err) == codes.Unavailable
}
