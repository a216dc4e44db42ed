package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/visorhq/visor/registry"
)

// heartbeat is how often an idle event stream sends a comment, so that a
// client that went away is noticed by a failing write.
const heartbeat = 25 * time.Second

// eventsData is the events page: the latest events before it opened (the
// script adds the live ones on top).
type eventsData struct {
	Events []registry.Event
	Note   string
}

// recentEvents is how many revisions back the events page reads.
const recentEvents = 200

func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	var d eventsData
	cur, err := h.cfg.Registry.CurrentRevision(ctx)
	if err == nil {
		d.Events, err = h.cfg.Registry.Events(ctx, max(1, cur-recentEvents), cur)
	}
	if err != nil {
		d.Note = "Earlier events could not be read (" + err.Error() + "); new ones appear below as they happen."
	}
	var keep []registry.Event
	for i := len(d.Events) - 1; i >= 0; i-- {
		if d.Events[i].Err == nil {
			keep = append(keep, d.Events[i])
		}
	}
	d.Events = keep
	h.render(w, r, http.StatusOK, "events", "Events", d)
}

// sse starts a server-sent event response and returns its flusher.
func sse(w http.ResponseWriter) func() error {
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	return rc.Flush
}

// live streams the registry's events to a page, as "change" events whose
// data is the registry.Event in JSON, until the client goes. A gap in the
// watch (compaction) is sent as a "resync" event: the page re-reads.
func (h *Handler) live(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	evs := h.cfg.Registry.WatchEvents(ctx, 0)
	flush := sse(w)
	if _, err := io.WriteString(w, ": live\n\n"); err != nil || flush() != nil {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		var msg string
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			msg = ": ping\n\n"
		case ev, ok := <-evs:
			if !ok {
				return
			}
			msg = eventMessage(ev)
		}
		if _, err := io.WriteString(w, msg); err != nil || flush() != nil {
			return
		}
	}
}

func eventMessage(ev registry.Event) string {
	if ev.Err != nil {
		if errors.Is(ev.Err, registry.ErrCompacted) {
			return "event: resync\ndata: {}\n\n"
		}
		return ": skipped a bad record\n\n"
	}
	b, _ := json.Marshal(ev) // plain strings and numbers: cannot fail
	return "event: change\ndata: " + string(b) + "\n\n"
}

// logs streams an instance's log as server-sent events: each line is one
// "line" event whose data is the line (the page inserts it as text). The
// last 200 lines come first, then new ones as they are written.
func (h *Handler) logs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	stream := r.URL.Query().Get("stream")
	if stream == "" {
		stream = "stdout"
	}
	if stream != "stdout" && stream != "stderr" {
		h.message(w, r, http.StatusBadRequest, "Bad request", fmt.Sprintf("stream must be stdout or stderr, not %q", stream))
		return
	}
	if h.cfg.Local == nil {
		h.notFound(w, r, "This agent serves no logs.")
		return
	}
	tail := 200
	if v := r.URL.Query().Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 10000 {
			h.message(w, r, http.StatusBadRequest, "Bad request", fmt.Sprintf("tail must be 0 to 10000, not %q", v))
			return
		}
		tail = n
	}
	if !h.cfg.Local.Has(id) {
		h.notFound(w, r, fmt.Sprintf("Instance %q does not run on this host; its logs are on its own host.", id))
		return
	}
	// The stream opens at once (the page then says it follows the log),
	// also when the log is still empty: a stderr nothing was written to
	// yet shows its first line when it comes.
	flush := sse(w)
	if _, err := io.WriteString(w, ": log\n\n"); err != nil || flush() != nil {
		return
	}
	lw := &lineWriter{w: w, flush: flush}
	err := h.cfg.Local.Logs(r.Context(), id, stream, tail, true, lw)
	if err != nil && r.Context().Err() == nil {
		h.log.Debug("log stream ended", "instance", id, "error", err)
	}
}

// lineWriter turns written bytes into one "line" event per line, flushed
// at once. A partial last line waits for its newline.
type lineWriter struct {
	w     io.Writer
	flush func() error
	buf   []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	var out strings.Builder
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		line := strings.ReplaceAll(string(l.buf[:i]), "\r", "")
		out.WriteString("event: line\ndata: " + line + "\n\n")
		l.buf = l.buf[i+1:]
	}
	if out.Len() == 0 {
		return len(p), nil
	}
	if _, err := io.WriteString(l.w, out.String()); err != nil {
		return 0, err
	}
	return len(p), l.flush()
}
