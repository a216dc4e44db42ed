package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/apierror"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/supervisor/logfile"
)

// apiSupervisor is what the local API's instance handlers need of the
// supervisor (*supervisor.Supervisor).
type apiSupervisor interface {
	instanceLister
	Has(id string) bool
	Signal(id, sig string) error
	LogPath(id, stream string) string
	CgroupMode() string
}

// localAPI serves the local API's status and instance endpoints from the
// few values they need of the agent; it needs no registry but for the
// session's lease and the leader's name, which it is given as functions.
type localAPI struct {
	host, addr, version string
	started             time.Time
	sup                 apiSupervisor
	log                 hclog.Logger
	// lease returns the live session's lease; false while disconnected.
	lease func() (clientv3.LeaseID, bool)
	// leader returns the reconciler leader's host, "" if none or unknown.
	leader func(ctx context.Context) string
}

// Status is the body of GET /v1/status.
type Status struct {
	Host       string         `json:"host"`
	Addr       string         `json:"addr"`
	Version    string         `json:"version"`
	Connected  bool           `json:"connected"`
	Lease      string         `json:"lease,omitempty"`
	Leader     string         `json:"leader,omitempty"`
	CgroupMode string         `json:"cgroup_mode"`
	Uptime     string         `json:"uptime"`
	Instances  map[string]int `json:"instances"`
}

func (api *localAPI) handleStatus(w http.ResponseWriter, r *http.Request) {
	st := Status{
		Host:       api.host,
		Addr:       api.addr,
		Version:    api.version,
		CgroupMode: api.sup.CgroupMode(),
		Uptime:     time.Since(api.started).Round(time.Second).String(),
		Instances:  map[string]int{},
	}
	if lease, ok := api.lease(); ok {
		st.Connected = true
		st.Lease = fmt.Sprintf("%x", int64(lease))
		st.Leader = api.leader(r.Context())
	}
	for _, in := range api.sup.List() {
		st.Instances[string(in.State)]++
	}
	writeJSON(w, http.StatusOK, st)
}

func (api *localAPI) handleInstances(w http.ResponseWriter, r *http.Request) {
	list := statusesWithUsage(api.sup)
	if list == nil {
		list = []supervisor.Status{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (api *localAPI) handleInstance(w http.ResponseWriter, r *http.Request) {
	st, ok := api.sup.Status(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no instance %q on this host", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// logsHandler serves GET /v1/instances/{id}/logs?stream=stdout|stderr|all&tail=N&follow=1.
// stream defaults to stdout; all merges both files (logfile.StreamMerged):
// each line labelled "stdout | " or "stderr | ", the last tail lines of
// stdout, then of stderr, then followed lines of both in the order they
// are read. A merged stream counts as one stream against limit.
// tail is at most maxTail (100000) lines; a larger value is rejected with
// 400 rather than clamped, so a client never mistakes a cut answer for the
// whole log. The lines are streamed from the file (logfile.Options.Stream),
// never held whole; at most limit's streams run at once (429 beyond); a
// stream ends when its client goes (the request's context, or a write that
// fails or blocks longer than streamWriteTimeout).
func (api *localAPI) logsHandler(limit *streamLimiter) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if !api.sup.Has(id) {
			writeError(w, http.StatusNotFound, fmt.Sprintf("no instance %q on this host", id))
			return
		}
		q := r.URL.Query()
		stream := q.Get("stream")
		if stream == "" {
			stream = "stdout"
		}
		if stream != "stdout" && stream != "stderr" && stream != "all" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("stream must be stdout, stderr or all, not %q", stream))
			return
		}
		const maxTail = 100000
		tail := 100
		if v := q.Get("tail"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > maxTail {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("tail must be an integer from 0 to %d, not %q", maxTail, v))
				return
			}
			tail = n
		}
		follow := q.Get("follow") == "1" || q.Get("follow") == "true"
		release, refused := limit.acquire(clientKey(r))
		if refused != "" {
			w.Header().Set("Retry-After", "5")
			writeError(w, http.StatusTooManyRequests, refused)
			return
		}
		defer release()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		out := io.Writer(w)
		if follow {
			fw := &flushWriter{w: w}
			fw.flush() // the client sees the headers before the first line
			out = fw
		}
		var err error
		if stream == "all" {
			srcs := []logfile.Source{{Label: "stdout", Path: api.sup.LogPath(id, "stdout")}, {Label: "stderr", Path: api.sup.LogPath(id, "stderr")}}
			err = logfile.Options{}.StreamMerged(r.Context(), srcs, tail, follow, out)
		} else {
			path := api.sup.LogPath(id, stream)
			err = logfile.Options{}.Stream(r.Context(), path, tail, follow, out)
			if errors.Is(err, os.ErrNotExist) && follow {
				// No output yet: wait for the file, then stream all of it.
				err = logfile.Follow(r.Context(), path, false, out)
			}
		}
		switch {
		case err == nil, r.Context().Err() != nil, errors.Is(err, os.ErrNotExist):
		default:
			api.log.Debug("log stream ended", "instance", id, "error", err)
		}
	}
}

// flushWriter flushes after every write so followed logs arrive at once
// (the log streamer writes a whole chunk at a time).
type flushWriter struct{ w http.ResponseWriter }

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err != nil {
		return n, err
	}
	return n, http.NewResponseController(f.w).Flush()
}

func (f *flushWriter) flush() {
	_ = http.NewResponseController(f.w).Flush()
}

// SignalRequest is the body of POST /v1/instances/{id}/signal.
type SignalRequest struct {
	Signal string `json:"signal"`
}

func (api *localAPI) handleSignal(w http.ResponseWriter, r *http.Request) {
	req, err := decodeSignalRequest(w, r)
	if err != nil {
		apierror.WriteCode(w, http.StatusBadRequest, "invalid_body", `body must be JSON {"signal": "HUP"}: `+err.Error())
		return
	}
	err = api.sup.Signal(r.PathValue("id"), req.Signal)
	switch {
	case errors.Is(err, supervisor.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, supervisor.ErrInvalidSpec):
		apierror.WriteCode(w, http.StatusBadRequest, "invalid_signal", err.Error())
	case err != nil:
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeJSON(w, http.StatusOK, map[string]string{"instance": r.PathValue("id"), "signal": req.Signal})
	}
}

// decodeSignalRequest reads one SignalRequest of at most 1 KiB, refusing
// unknown fields, anything after it and an empty signal.
func decodeSignalRequest(w http.ResponseWriter, r *http.Request) (SignalRequest, error) {
	var req SignalRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, err
	}
	if dec.More() {
		return req, errors.New("data after the JSON object")
	}
	if req.Signal == "" {
		return req, errors.New("signal is empty")
	}
	return req, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// writeError answers code with the API's one error body,
// {"error": msg, "code": ...} (internal/apierror).
func writeError(w http.ResponseWriter, code int, msg string) {
	apierror.Write(w, code, msg)
}
