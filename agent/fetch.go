package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ErrArtifact marks a revision whose artifact cannot be fetched, verified
// or unpacked. Tickets failing with it are released with the reason so
// another host may try (an unreachable URL may be reachable from there).
var ErrArtifact = errors.New("agent: artifact")

// Defaults of the artifact bounds (see Config).
const (
	defaultArtifactConnectTimeout = 30 * time.Second
	defaultArtifactTimeout        = 10 * time.Minute
	defaultArtifactStallTimeout   = time.Minute
	defaultArtifactMaxBytes       = 2 << 30
	defaultArtifactMaxUnpacked    = 8 << 30
	defaultArtifactMaxEntries     = 100_000
	defaultArtifactCacheMaxAge    = 7 * 24 * time.Hour
	defaultArtifactCacheMaxBytes  = 20 << 30
	defaultArtifactFetchParallel  = 8
)

// artifactPruneInterval is the period of the artifact cache's pruning; a
// new artifact in the cache also triggers a pass.
const artifactPruneInterval = 10 * time.Minute

// artifactLimits are the bounds of one artifact's fetch and unpacking and
// of the cache, from Config.
type artifactLimits struct {
	connectTimeout time.Duration
	timeout        time.Duration
	stallTimeout   time.Duration
	linkLocal      bool // link-local targets allowed
	maxBytes       int64
	unpack         unpackLimits
	redirectHosts  []string
	cacheMaxAge    time.Duration
	cacheMaxBytes  int64
	fetchParallel  int
}

func artifactLimitsOf(c Config) artifactLimits {
	return artifactLimits{
		connectTimeout: c.ArtifactConnectTimeout,
		timeout:        c.ArtifactTimeout,
		stallTimeout:   c.ArtifactStallTimeout,
		linkLocal:      c.ArtifactAllowLinkLocal,
		maxBytes:       c.ArtifactMaxBytes,
		unpack:         unpackLimits{maxBytes: c.ArtifactMaxUnpackedBytes, maxEntries: c.ArtifactMaxEntries},
		redirectHosts:  c.ArtifactRedirectHosts,
		cacheMaxAge:    c.ArtifactCacheMaxAge,
		cacheMaxBytes:  c.ArtifactCacheMaxBytes,
		fetchParallel:  c.ArtifactFetchParallel,
	}
}

// artifactCache fetches revision artifacts into a content-addressed cache
// (<dir>/blobs/<sha256>.tar.gz), checks their sha256, and unpacks each
// into a release directory that the instances of that revision share as
// their working directory:
//
//   - <dir>/releases/<sha256>, mode 0700 root, for instances that run as
//     root (no user, or uid 0);
//   - <dir>/releases/<sha256>-g<gid>, owned by root and group gid, dirs
//     0750 and files 0640 (0750 when executable), for instances that run
//     as another user: readable by the instance (through its group), not
//     writable by it, and closed to every other group. Such a release is
//     unpacked by the agent as root into a private temporary directory,
//     then handed over (chown, chmod) and renamed into place, so the
//     unpacking never runs with less containment than a root release.
//
// A release an app writes into is shared by its instances on the host
// (root releases only: the others are read-only to their instances).
//
// Every fetch is bounded (see fetchBlob) and runs in a flight of its own,
// shared by the starts that wait for it and cancelled when the last of
// them gives up (a stop, the ticket's deletion, shutdown). The cache is
// pruned by age and size (prune), never removing a release in use.
type artifactCache struct {
	dir    string
	lim    artifactLimits
	client *http.Client
	log    hclog.Logger
	sem    chan struct{} // bounds fetches and unpacks running at once
	kick   chan struct{} // a new entry: prune soon
	wg     sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	flights map[string]*flight
	pins    map[string]int // path -> users: never pruned while > 0
}

// flight is one fetch-and-unpack, shared by the starts waiting for it.
type flight struct {
	done    chan struct{} // closed when dir and err are set
	dir     string
	err     error
	waiters int  // under artifactCache.mu
	settled bool // under artifactCache.mu: err is final, waiters pinned
	cancel  context.CancelCauseFunc
}

func newArtifactCache(dir string, lim artifactLimits, log hclog.Logger) *artifactCache {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &artifactCache{
		dir:     dir,
		lim:     lim,
		log:     log,
		sem:     make(chan struct{}, max(lim.fetchParallel, 1)),
		kick:    make(chan struct{}, 1),
		flights: map[string]*flight{},
		pins:    map[string]int{},
	}
	dialer := &net.Dialer{Timeout: lim.connectTimeout, KeepAlive: 30 * time.Second}
	if !lim.linkLocal {
		dialer.Control = refuseLinkLocal // after name resolution, before connecting
	}
	c.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           dialer.DialContext,
			TLSHandshakeTimeout:   lim.connectTimeout,
			ResponseHeaderTimeout: lim.connectTimeout,
			ForceAttemptHTTP2:     true,
			// Fetches are rare and large: no idle connections (and no
			// goroutines) are kept between them.
			DisableKeepAlives: true,
		},
		CheckRedirect: c.checkRedirect,
	}
	return c
}

// wait waits for every flight to end. Call it once nothing waits for a
// flight any more (each is cancelled when its last waiter leaves).
func (c *artifactCache) wait() { c.wg.Wait() }

// releasePath is the release directory of artifact sum for instances
// running with group gid (gid < 0: as root).
func (c *artifactCache) releasePath(sum string, gid int) string {
	name := sum
	if gid >= 0 {
		name += "-g" + strconv.Itoa(gid)
	}
	return filepath.Join(c.dir, "releases", name)
}

// validSum returns sum in lower case, or an error unless it is 64 hex digits.
func validSum(sum string) (string, error) {
	sum = strings.ToLower(sum)
	if len(sum) != 64 {
		return "", fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrArtifact, sum)
	}
	if _, err := hex.DecodeString(sum); err != nil {
		return "", fmt.Errorf("%w: sha256 %q is not hex", ErrArtifact, sum)
	}
	return sum, nil
}

// Dir returns the release directory of the artifact at rawURL with the
// given sha256 for instances running with group gid (gid < 0: as root),
// fetching and unpacking it first if needed. Concurrent calls for one
// release share one flight. Dir returns when the release is ready, the
// flight failed, or ctx ends; the flight is cancelled when every caller
// waiting for it has left. The caller must call release once it no longer
// needs the directory to stay (the instance started, or will not): until
// then pruning leaves it alone.
func (c *artifactCache) Dir(ctx context.Context, rawURL, sum string, gid int) (dir string, release func(), err error) {
	if sum, err = validSum(sum); err != nil {
		return "", nil, err
	}
	rel := c.releasePath(sum, gid)
	key := rel + " " + rawURL // two URLs claiming one digest are each checked
	c.mu.Lock()
	if c.readyLocked(rel) {
		c.mu.Unlock()
		return rel, c.unpinFunc(rel), nil
	}
	f := c.flights[key]
	if f == nil {
		fctx, cancel := context.WithCancelCause(context.Background())
		f = &flight{done: make(chan struct{}), cancel: cancel}
		c.flights[key] = f
		c.wg.Go(func() { c.fly(fctx, f, key, rawURL, sum, rel, gid) })
	}
	f.waiters++
	c.mu.Unlock()

	select {
	case <-f.done:
		c.mu.Lock()
		f.waiters--
		c.mu.Unlock()
		if f.err != nil {
			return "", nil, f.err
		}
		return rel, c.unpinFunc(rel), nil // pinned for us by fly
	case <-ctx.Done():
		cause := context.Cause(ctx)
		c.mu.Lock()
		f.waiters--
		switch {
		case f.settled && f.err == nil:
			c.unpinLocked(rel) // fly pinned it for us
		case !f.settled && f.waiters == 0:
			// Nobody wants it any more: stop it, and let a later
			// caller start afresh rather than join a cancelled flight.
			f.cancel(fmt.Errorf("every start waiting for it gave up: %w", cause))
			if c.flights[key] == f {
				delete(c.flights, key)
			}
		}
		c.mu.Unlock()
		return "", nil, fmt.Errorf("%w: fetch %s given up: %w", ErrArtifact, redact(rawURL), cause)
	}
}

// readyLocked reports whether release rel is complete; if so it pins it
// and records the use (the marker's mtime is the release's last use).
func (c *artifactCache) readyLocked(rel string) bool {
	marker := filepath.Join(rel, releaseMarker)
	if _, err := os.Stat(marker); err != nil {
		return false
	}
	now := time.Now()
	_ = os.Chtimes(marker, now, now)
	c.pins[rel]++
	return true
}

func (c *artifactCache) unpinFunc(path string) func() {
	var once sync.Once
	return func() { once.Do(func() { c.unpin(path) }) }
}

func (c *artifactCache) pin(path string) {
	c.mu.Lock()
	c.pins[path]++
	c.mu.Unlock()
}

func (c *artifactCache) unpin(path string) {
	c.mu.Lock()
	c.unpinLocked(path)
	c.mu.Unlock()
}

func (c *artifactCache) unpinLocked(path string) {
	if c.pins[path]--; c.pins[path] <= 0 {
		delete(c.pins, path)
	}
}

// fly runs one flight: wait for a fetch slot, then fetch and unpack within
// the total timeout, and publish the outcome.
func (c *artifactCache) fly(ctx context.Context, f *flight, key, rawURL, sum, rel string, gid int) {
	defer f.cancel(nil)
	f.dir, f.err = c.fetchAndUnpack(ctx, rawURL, sum, rel, gid)
	c.mu.Lock()
	if c.flights[key] == f {
		delete(c.flights, key)
	}
	// Pin the release for each start still waiting, before any of them
	// wakes: a prune in between must not take it (each waiter releases
	// its pin, see Dir).
	if f.err == nil && f.waiters > 0 {
		c.pins[rel] += f.waiters
	}
	f.settled = true
	c.mu.Unlock()
	close(f.done)
	if f.err == nil {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// errFetchTimeout is the cause of a flight that ran out of its total time.
var errFetchTimeout = errors.New("total time limit reached (artifact_timeout)")

func (c *artifactCache) fetchAndUnpack(ctx context.Context, rawURL, sum, rel string, gid int) (string, error) {
	select {
	case c.sem <- struct{}{}:
		defer func() { <-c.sem }()
	case <-ctx.Done():
		return "", fmt.Errorf("%w: fetch %s: %w", ErrArtifact, redact(rawURL), context.Cause(ctx))
	}
	if _, err := os.Stat(filepath.Join(rel, releaseMarker)); err == nil {
		return rel, nil // another flight (another URL) made it meanwhile
	}
	ctx, cancel := context.WithTimeoutCause(ctx, c.lim.timeout,
		fmt.Errorf("%w after %s", errFetchTimeout, c.lim.timeout))
	defer cancel()
	blob, err := c.fetchBlob(ctx, rawURL, sum)
	if err != nil {
		return "", err
	}
	defer c.unpin(blob)
	if err := unpack(ctx, blob, rel, c.lim.unpack, gid); err != nil {
		return "", err
	}
	return rel, nil
}

// checkRedirect allows a redirect only to the same scheme and host (with
// port) as the original request, or to a host listed in
// Config.ArtifactRedirectHosts (same scheme still), at most 10 times.
func (c *artifactCache) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	orig := via[0].URL
	to := req.URL.Scheme + "://" + req.URL.Host
	if req.URL.Scheme != orig.Scheme {
		return fmt.Errorf("redirect to %s refused: the scheme must stay %s", to, orig.Scheme)
	}
	if err := c.checkLinkLocal(req.URL); err != nil {
		return fmt.Errorf("redirect to %s refused: %w", to, err)
	}
	if strings.EqualFold(req.URL.Host, orig.Host) {
		return nil
	}
	for _, h := range c.lim.redirectHosts {
		if strings.EqualFold(h, req.URL.Host) || strings.EqualFold(h, req.URL.Hostname()) {
			return nil
		}
	}
	return fmt.Errorf("redirect to %s refused: not the host of the artifact URL (%s); allow it with artifact_redirect_hosts", to, orig.Host)
}

// redact returns rawURL with any password replaced, for messages.
func redact(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	return rawURL
}

// fetchBlob downloads (or copies) the artifact into the blob cache,
// verifying its sha256 before it becomes visible under its final name, and
// returns its path, pinned (the caller unpins it). The fetch ends with ctx
// (the flight's, with the total timeout); connecting (TCP, TLS, until the
// response headers) is bounded by Config.ArtifactConnectTimeout; more
// than Config.ArtifactMaxBytes is refused; redirects follow checkRedirect.
//
// A file:// source must be a regular file: a fifo, device, socket or
// directory is refused before anything reads it (a fifo would block the
// open itself, beyond any cancellation).
//
// A sha256 mismatch of a file:// source does not report the file's actual
// digest: the error goes into the registry (the ticket's reasons), and
// anyone who may register a revision could otherwise learn the digest of
// any file the agent (root) can read, enough to confirm a guess of a small
// secret. For http(s) the digest of what the server sent is reported: that
// content is the server's to give, and knowing it helps fix the revision.
func (c *artifactCache) fetchBlob(ctx context.Context, rawURL, sum string) (string, error) {
	blobs := filepath.Join(c.dir, "blobs")
	final := filepath.Join(blobs, sum+".tar.gz")
	c.pin(final)
	if _, err := os.Stat(final); err == nil {
		now := time.Now()
		_ = os.Chtimes(final, now, now)
		return final, nil
	}
	blob, err := c.download(ctx, rawURL, sum, blobs, final)
	if err != nil {
		c.unpin(final)
		return "", err
	}
	return blob, nil
}

func (c *artifactCache) download(ctx context.Context, rawURL, sum, blobs, final string) (string, error) {
	if err := os.MkdirAll(blobs, 0o750); err != nil {
		return "", fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("%w: url %q: %v", ErrArtifact, redact(rawURL), err)
	}
	shown := u.Redacted()
	local := u.Scheme == "file"
	var src io.ReadCloser
	switch u.Scheme {
	case "file":
		f, err := openRegular(u.Path)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrArtifact, err)
		}
		src = f
	case "http", "https":
		var stop func()
		if src, ctx, stop, err = c.openHTTP(ctx, u, rawURL); err != nil {
			return "", err
		}
		defer stop()
	default:
		return "", fmt.Errorf("%w: url %q: scheme must be file, http or https", ErrArtifact, shown)
	}
	defer src.Close()

	tmp, err := os.CreateTemp(blobs, ".fetch-*")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(ctxReader{ctx, src}, c.lim.maxBytes+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return "", fmt.Errorf("%w: download %s: %v", ErrArtifact, shown, err)
	}
	if n > c.lim.maxBytes {
		return "", fmt.Errorf("%w: %s is larger than the %d bytes allowed (artifact_max_bytes)", ErrArtifact, shown, c.lim.maxBytes)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		if local {
			return "", fmt.Errorf("%w: sha256 mismatch for %s: the file's digest is not %s (the digest of a local file is not reported)", ErrArtifact, shown, sum)
		}
		return "", fmt.Errorf("%w: sha256 mismatch for %s: want %s, got %s", ErrArtifact, shown, sum, got)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	return final, nil
}

// openHTTP sends the GET of an http(s) artifact and returns its body, to
// be read with the context it returns (ended by the stall timeout, see
// stallReader, or by ctx) and stop called when done. A link-local target
// is refused before anything is sent (see refuseLinkLocal).
func (c *artifactCache) openHTTP(ctx context.Context, u *url.URL, rawURL string) (io.ReadCloser, context.Context, func(), error) {
	shown := u.Redacted()
	if err := c.checkLinkLocal(u); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: fetch %s: %v", ErrArtifact, shown, err)
	}
	sctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, rawURL, nil)
	if err != nil {
		cancel(nil)
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		cancel(nil)
		var ll *linkLocalError
		switch {
		case errors.As(err, &ll):
			err = ll
		case context.Cause(ctx) != nil:
			err = context.Cause(ctx)
		}
		return nil, nil, nil, fmt.Errorf("%w: fetch %s: %v", ErrArtifact, shown, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel(nil)
		return nil, nil, nil, fmt.Errorf("%w: fetch %s: %s", ErrArtifact, shown, resp.Status)
	}
	if resp.ContentLength > c.lim.maxBytes {
		resp.Body.Close()
		cancel(nil)
		return nil, nil, nil, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed (artifact_max_bytes)",
			ErrArtifact, shown, resp.ContentLength, c.lim.maxBytes)
	}
	body := newStallReader(resp.Body, c.lim.stallTimeout, cancel)
	return body, sctx, func() { body.stop(); cancel(nil) }, nil
}

// openRegular opens path for reading if it is a regular file (following
// symlinks), and refuses anything else by what it is. The open itself
// cannot block: it is non-blocking (a fifo swapped in after the check would
// otherwise wait for a writer), and the file is checked again once open.
func openRegular(path string) (*os.File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is %s, not a regular file", path, fileKind(st.Mode()))
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	if st, err = f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s is %s, not a regular file", path, fileKind(st.Mode()))
	}
	return f, nil
}

// fileKind names what a non-regular file is.
func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a fifo"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	default:
		return "not a regular file (" + m.Type().String() + ")"
	}
}

// ctxReader is a reader that fails with ctx's cause once ctx ends, checked
// before every read (a read of a regular file or an HTTP body returns in
// bounded time; an HTTP body's read also ends with the request's ctx).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if r.ctx.Err() != nil {
		return 0, context.Cause(r.ctx)
	}
	return r.r.Read(p)
}
