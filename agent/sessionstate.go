package agent

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/visorhq/visor/registry"
)

// sessionState holds the agent's current registry session for the parts
// that use it across sessions (the state writer, the API's status, the
// shutdown): the session (nil while disconnected), a channel closed
// whenever it changes, and since when the agent has been disconnected.
// The session loop (session.go) sets it.
type sessionState struct {
	// connected is told each change (the agent's connected gauge); it
	// must not block.
	connected func(up bool)

	mu      sync.Mutex // guards the fields below
	session *registry.HostSession
	changed chan struct{} // closed and replaced whenever session changes
	// disconnectedSince is when the agent last lost its registry
	// session; zero while connected.
	disconnectedSince time.Time
}

func newSessionState(connected func(up bool)) *sessionState {
	return &sessionState{connected: connected, changed: make(chan struct{})}
}

// set makes s (nil: none, disconnected) the current session.
func (st *sessionState) set(s *registry.HostSession) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.session = s
	if s != nil {
		st.disconnectedSince = time.Time{}
	} else if st.disconnectedSince.IsZero() {
		st.disconnectedSince = time.Now()
	}
	close(st.changed)
	st.changed = make(chan struct{})
	st.connected(s != nil)
}

// current returns the live session, nil while disconnected.
func (st *sessionState) current() *registry.HostSession {
	s, _ := st.currentAndChange()
	return s
}

// currentAndChange returns the live session (nil while disconnected) and
// a channel closed when it changes.
func (st *sessionState) currentAndChange() (*registry.HostSession, <-chan struct{}) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.session, st.changed
}

// forWriter is currentAndChange for the state writer: no session is a nil
// interface, not a nil *registry.HostSession in one.
func (st *sessionState) forWriter() (writerSession, <-chan struct{}) {
	s, ch := st.currentAndChange()
	if s == nil {
		return nil, ch
	}
	return s, ch
}

// disconnected notes that the agent has no session at now (unless it
// already had none) and returns since when it has had none.
func (st *sessionState) disconnected(now time.Time) time.Time {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.disconnectedSince.IsZero() {
		st.disconnectedSince = now
	}
	return st.disconnectedSince
}

// leaseFile is the file (DataDir/lease) where the agent keeps the lease of
// its session, so that an agent restarted within the TTL knows the lease
// still holding its host key for its own and revokes it (register).
type leaseFile string

// save writes lease id (hex) through a temporary file renamed over the
// old one; it is best effort: without it, a restart within the TTL waits
// for the old lease to expire.
func (f leaseFile) save(id int64) {
	tmp := string(f) + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(id, 16)), 0o640); err == nil {
		_ = os.Rename(tmp, string(f))
	}
}

// load returns the lease saved; false when there is none or it does not
// parse.
func (f leaseFile) load() (int64, bool) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return 0, false
	}
	id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64)
	return id, err == nil
}
