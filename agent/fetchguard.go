package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// Guards of the artifact fetch beside its size and time bounds (fetch.go):
// link-local targets are refused, and a response that stops sending fails
// after Config.ArtifactStallTimeout.

// linkLocalError refuses a link-local artifact target: 169.254.0.0/16
// and fe80::/10 hold cloud metadata services (instance credentials), so a
// revision's URL must not make the agent (root, on the host's network)
// fetch from them.
type linkLocalError struct{ addr string }

func (e *linkLocalError) Error() string {
	return fmt.Sprintf("refusing link-local address %s (cloud metadata services answer there); "+
		"allow it with artifact_allow_link_local", e.addr)
}

// linkLocal reports whether host (an IP literal, with or without a
// zone) is a link-local unicast address; names are not.
func linkLocal(host string) bool {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return ip.Unmap().IsLinkLocalUnicast()
}

// refuseLinkLocal is the fetch dialer's Control: it runs once the address
// is resolved and before the connection is made, so a name that resolves
// to a link-local address (or a redirect to one) is refused without a
// packet sent.
func refuseLinkLocal(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	if linkLocal(host) {
		return &linkLocalError{addr: host}
	}
	return nil
}

// checkLinkLocal refuses u when its host is a link-local IP literal and
// such targets are not allowed. The dialer checks resolved names too;
// this check also holds when a proxy (HTTP_PROXY) does the dialing.
func (c *artifactCache) checkLinkLocal(u *url.URL) error {
	if c.lim.linkLocal || !linkLocal(u.Hostname()) {
		return nil
	}
	return &linkLocalError{addr: u.Hostname()}
}

// errStalled is the cause of a fetch ended by the stall timeout.
var errStalled = errors.New("stalled")

// stallReader reads an HTTP body and cancels the fetch (cancel, with a
// cause naming the stall) when no byte arrives for d: a server that sends
// a little and then nothing fails after d, not after the whole fetch's
// timeout. The cancel closes the connection, which ends a blocked Read.
type stallReader struct {
	r     io.ReadCloser
	d     time.Duration
	timer *time.Timer

	mu      sync.Mutex // guards stopped
	stopped bool
}

func newStallReader(r io.ReadCloser, d time.Duration, cancel context.CancelCauseFunc) *stallReader {
	s := &stallReader{r: r, d: d}
	s.timer = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped {
			cancel(fmt.Errorf("%w: no bytes received for %s (artifact_stall_timeout)", errStalled, d))
		}
	})
	return s
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.timer.Reset(s.d)
	}
	return n, err
}

func (s *stallReader) Close() error { return s.r.Close() }

// stop ends the stall watch; the fetch is over.
func (s *stallReader) stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.timer.Stop()
}
