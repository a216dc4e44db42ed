package discovery

// The watch endpoint: a service's endpoint changes as server-sent events.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// heartbeatInterval spaces SSE comments that keep idle watch connections
// open through proxies.
const heartbeatInterval = 15 * time.Second

// EventID formats the SSE id of the index-th event at revision rev.
func EventID(rev int64, index int) string { return fmt.Sprintf("%d-%d", rev, index) }

// ParseEventID parses an SSE id written by EventID.
func ParseEventID(s string) (rev int64, index int, err error) {
	rs, is, ok := strings.Cut(s, "-")
	rev, err1 := strconv.ParseInt(rs, 10, 64)
	index, err2 := strconv.Atoi(is)
	if !ok || err1 != nil || err2 != nil || rev < 1 || index < 0 {
		return 0, 0, fmt.Errorf("%w: event id %q: want REVISION-INDEX", ErrInvalid, s)
	}
	return rev, index, nil
}

// resumePoint reads where a watch resumes: after Last-Event-ID, or after
// revision ?since=, or from now.
func resumePoint(r *http.Request) (from int64, skipUpTo int, err error) {
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		rev, idx, err := ParseEventID(id)
		if err != nil {
			return 0, 0, err
		}
		return rev, idx, nil
	}
	if s := r.URL.Query().Get("since"); s != "" {
		rev, err := strconv.ParseInt(s, 10, 64)
		if err != nil || rev < 0 {
			return 0, 0, fmt.Errorf("%w: since=%q: want a revision", ErrInvalid, s)
		}
		if rev == 0 {
			return 0, -1, nil
		}
		return rev + 1, -1, nil
	}
	return 0, -1, nil
}

// WatchEvent is the data of one SSE event of the watch endpoint.
type WatchEvent struct {
	Type     EventType `json:"type"`
	Revision int64     `json:"revision"`
	Endpoint Endpoint  `json:"endpoint"`
}

// watch serves GET /v1/services/{name}/watch: the changes of a
// service's endpoints as server-sent events, from now, after ?since= or
// after Last-Event-ID, capped per caller and in total.
func (h *handler) watch(w http.ResponseWriter, r *http.Request) {
	name, f, err := parseWatch(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	caller := callerOf(r).Name
	if code, err := h.startWatch(caller); err != nil {
		writeError(w, code, err)
		return
	}
	defer h.endWatch(caller)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	streamWatch(ctx, w, rc, h.store.Watch(ctx, name, f.from), f)
}

// watchFilter says which events of a watch a client gets: those whose
// endpoint's version matches, not those it had before it reconnected
// (revision from, indexes up to skipUpTo).
type watchFilter struct {
	match    VersionMatcher
	from     int64
	skipUpTo int
}

// parseWatch reads a watch request: the service name, the version range
// and where it resumes.
func parseWatch(r *http.Request) (string, watchFilter, error) {
	name, version, err := nameAndVersion(r)
	if err != nil {
		return "", watchFilter{}, err
	}
	m, err := ParseVersionQuery(version)
	if err != nil {
		return "", watchFilter{}, err
	}
	from, skipUpTo, err := resumePoint(r)
	if err != nil {
		return "", watchFilter{}, err
	}
	return name, watchFilter{match: m, from: from, skipUpTo: skipUpTo}, nil
}

// streamWatch writes events to w as SSE until ctx ends, the client goes
// or the store's watch closes, with a heartbeat comment when idle.
func streamWatch(ctx context.Context, w io.Writer, rc *http.ResponseController, events <-chan Event, f watchFilter) {
	beat := time.NewTicker(heartbeatInterval)
	defer beat.Stop()
	var curRev int64
	idx := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if _, err := io.WriteString(w, ": ping\n\n"); err != nil {
				return
			}
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Err != nil && ev.Type == "" {
				writeSSEError(w, ev.Err) // fatal; the channel closes next
				_ = rc.Flush()
				continue
			}
			if ev.Revision != curRev {
				curRev, idx = ev.Revision, 0
			} else {
				idx++
			}
			if ev.Revision == f.from && idx <= f.skipUpTo {
				continue // delivered before the client reconnected
			}
			if writeWatchEvent(w, ev, idx, f.match) != nil {
				return
			}
		}
		// Flush once the burst of one etcd response is written.
		if len(events) == 0 {
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}

// writeWatchEvent writes ev, the idx-th event of its revision, as an SSE
// event if its version matches m (an error event if it carries one); the
// error is the client's connection failing.
func writeWatchEvent(w io.Writer, ev Event, idx int, m VersionMatcher) error {
	if ev.Err != nil {
		writeSSEError(w, ev.Err)
		return nil
	}
	if !m.Match(ev.Endpoint.Version) {
		return nil
	}
	b, err := json.Marshal(WatchEvent{Type: ev.Type, Revision: ev.Revision, Endpoint: ev.Endpoint})
	if err != nil {
		writeSSEError(w, err)
		return nil
	}
	_, err = fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", EventID(ev.Revision, idx), ev.Type, b)
	return err
}

// startWatch counts a watch stream of caller against the caps, or returns
// the status and error that refuse it.
func (h *handler) startWatch(caller string) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byCaller[caller] >= h.maxWPer {
		return http.StatusTooManyRequests, fmt.Errorf("%w: client %q has %d watch streams open, the cap per client is %d; close one first", ErrLimit, caller, h.byCaller[caller], h.maxWPer)
	}
	if h.watches >= h.maxW {
		return http.StatusServiceUnavailable, fmt.Errorf("discovery: %d watch streams open, the cap of this agent is %d; retry later", h.watches, h.maxW)
	}
	h.watches++
	h.byCaller[caller]++
	return 0, nil
}

func (h *handler) endWatch(caller string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.watches--
	if h.byCaller[caller] <= 1 {
		delete(h.byCaller, caller)
	} else {
		h.byCaller[caller]--
	}
}

func writeSSEError(w io.Writer, err error) {
	b, _ := json.Marshal(errorBody{Error: err.Error(), Code: "watch_failed"})
	fmt.Fprintf(w, "event: error\ndata: %s\n\n", b)
}
