package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"syscall"
	"time"
)

// CheckType is the kind of a HealthCheck. Each kind has one prober, as
// Consul has one check type per kind (CheckHTTP, CheckTCP, ...).
type CheckType string

// The kinds of health check.
const (
	// CheckExec runs HealthCheck.Command as the instance's user, with its
	// Env and Dir; exit 0 passes.
	CheckExec CheckType = "exec"
	// CheckTCP connects to HealthCheck.Address; an accepted connection
	// passes.
	CheckTCP CheckType = "tcp"
	// CheckHTTP fetches HealthCheck.URL; a 2xx or 3xx status passes
	// (redirects are not followed).
	CheckHTTP CheckType = "http"
)

// CheckTypes returns every valid CheckType.
func CheckTypes() []CheckType { return []CheckType{CheckExec, CheckTCP, CheckHTTP} }

// Valid reports whether t is one of CheckTypes.
func (t CheckType) Valid() bool {
	switch t {
	case CheckExec, CheckTCP, CheckHTTP:
		return true
	}
	return false
}

// prober runs one probe of a health check: nil means it passed. It returns
// when the probe is done or ctx ends (the check's timeout).
type prober interface {
	probe(ctx context.Context) error
}

// runAs is what an exec check inherits from its instance: environment,
// working directory and credentials.
type runAs struct {
	env  []string
	dir  string
	cred *syscall.Credential // nil: the supervisor's own
}

// newProber checks the fields h's type needs and returns its prober. An
// exec check runs as run says.
func newProber(h HealthCheck, run runAs) (prober, error) {
	switch h.Type {
	case CheckExec:
		if len(h.Command) == 0 {
			return nil, errors.New("exec check without command")
		}
		return execProber{argv: h.Command, run: run}, nil
	case CheckTCP:
		if _, _, err := net.SplitHostPort(h.Address); err != nil {
			return nil, fmt.Errorf("tcp address: %v", err)
		}
		return tcpProber{address: h.Address}, nil
	case CheckHTTP:
		u, err := url.Parse(h.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("bad http url %q", h.URL)
		}
		return httpProber{url: h.URL}, nil
	}
	return nil, fmt.Errorf("%w %q", errUnknownCheckType, h.Type)
}

// errUnknownCheckType is wrapped by newProber's error for a type that is
// not Valid.
var errUnknownCheckType = errors.New("unknown type")

// probeWithin runs one probe of p, ended after timeout.
func probeWithin(ctx context.Context, p prober, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return p.probe(ctx)
}

// execProber is a CheckExec check. It runs as the instance's user, group
// and supplementary groups, never as the supervisor: the instance may
// rewrite the script it names (issue 14, row 1).
type execProber struct {
	argv []string
	run  runAs
}

func (p execProber) probe(ctx context.Context) error {
	// The check is a process group of its own, killed whole at the
	// timeout (not only its first process: a shell's children would
	// outlive it) and once it has exited (what it left in the
	// background). Its pid, so the group id, is not reused while members
	// remain.
	cmd := exec.CommandContext(ctx, p.argv[0], p.argv[1:]...)
	cmd.Env, cmd.Dir = p.run.env, p.run.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: p.run.cred}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if cmd.Process != nil {
		_ = killGroup(cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		return fmt.Errorf("exec check: %w", err)
	}
	return nil
}

// tcpProber is a CheckTCP check.
type tcpProber struct{ address string }

func (p tcpProber) probe(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.address)
	if err != nil {
		return fmt.Errorf("tcp check: %w", err)
	}
	return c.Close()
}

// httpProber is a CheckHTTP check.
type httpProber struct{ url string }

// errHealthStatus is wrapped by the error of an http check answered with
// a status that fails.
var errHealthStatus = errors.New("unhealthy status")

// healthTransport keeps no idle connections between probes.
var healthTransport = &http.Transport{DisableKeepAlives: true}

func (p httpProber) probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return fmt.Errorf("http check: %w", err)
	}
	resp, err := healthTransport.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("http check: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("http check: %w: status %d", errHealthStatus, resp.StatusCode)
	}
	return nil
}
