package apierror

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
)

// Body is the JSON body of every error response of the agent API.
type Body struct {
	// Error says what went wrong, for a person.
	Error string `json:"error"`
	// Code classifies it, for a program: a snake_case word.
	Code string `json:"code"`
}

// Code returns the code for status: its status text in snake case
// ("not_found" for 404), or "error" for a status net/http does not name.
func Code(status int) string {
	t := http.StatusText(status)
	if t == "" {
		return "error"
	}
	t = strings.NewReplacer(" ", "_", "-", "_", "'", "").Replace(t)
	return strings.ToLower(t)
}

// Write answers status with Body{msg, Code(status)}.
func Write(w http.ResponseWriter, status int, msg string) {
	WriteCode(w, status, Code(status), msg)
}

// WriteCode answers status with Body{msg, code}.
func WriteCode(w http.ResponseWriter, status int, code, msg string) {
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Body{Error: msg, Code: code}) // the client went away; nothing to do
}

// Handler wraps next so that an error response it writes as plain text
// (status 400 or above with a text/plain Content-Type, as http.Error and
// ServeMux's 404 and 405 write) goes out as a Body with the text as its
// error. Responses of other types pass through untouched, streams
// included.
func Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &textErrorWriter{ResponseWriter: w}
		next.ServeHTTP(tw, r)
		if tw.status != 0 {
			msg := strings.TrimSpace(tw.text.String())
			if msg == "" {
				msg = http.StatusText(tw.status)
			}
			WriteCode(w, tw.status, Code(tw.status), msg)
		}
	})
}

// textErrorWriter holds back a plain-text error response: status is set
// (and nothing has reached the client) once one began; text collects its
// body, at most maxText bytes.
type textErrorWriter struct {
	http.ResponseWriter
	status  int
	text    bytes.Buffer
	written bool
}

const maxText = 4 << 10

func (t *textErrorWriter) WriteHeader(status int) {
	if t.written || t.status != 0 {
		return
	}
	if status >= 400 && strings.HasPrefix(t.Header().Get("Content-Type"), "text/plain") {
		t.status = status
		return
	}
	t.written = true
	t.ResponseWriter.WriteHeader(status)
}

func (t *textErrorWriter) Write(p []byte) (int, error) {
	if !t.written && t.status == 0 {
		t.WriteHeader(http.StatusOK)
	}
	if t.status != 0 {
		if room := maxText - t.text.Len(); room > 0 {
			t.text.Write(p[:min(len(p), room)])
		}
		return len(p), nil
	}
	return t.ResponseWriter.Write(p)
}

// Flush flushes a response that is passing through; a held-back error is
// written whole when the handler returns.
func (t *textErrorWriter) Flush() {
	if t.status == 0 {
		_ = http.NewResponseController(t.ResponseWriter).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (t *textErrorWriter) Unwrap() http.ResponseWriter { return t.ResponseWriter }
