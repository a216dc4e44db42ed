package apierror

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCode(t *testing.T) {
	for status, want := range map[int]string{
		400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
		405: "method_not_allowed", 409: "conflict", 413: "request_entity_too_large",
		429: "too_many_requests", 500: "internal_server_error", 501: "not_implemented",
		503: "service_unavailable", 599: "error",
	} {
		if got := Code(status); got != want {
			t.Errorf("Code(%d) = %q, want %q", status, got, want)
		}
	}
}

// TestHandler: text/plain errors (ServeMux's 404 and 405, http.Error) come
// out as a Body; JSON errors and successful responses, streamed ones too,
// pass through unchanged.
func TestHandler(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /json", func(w http.ResponseWriter, r *http.Request) {
		WriteCode(w, http.StatusConflict, "busy", "it is busy")
	})
	mux.HandleFunc("GET /plain", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "plain failure", http.StatusTeapot)
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "line 1\n")
		http.NewResponseController(w).Flush()
		io.WriteString(w, "line 2\n")
	})
	srv := httptest.NewServer(Handler(mux))
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		status       int
		body         Body // zero: not an error
		raw          string
	}{
		{"GET", "/json", 409, Body{"it is busy", "busy"}, ""},
		{"GET", "/plain", 418, Body{"plain failure", "im_a_teapot"}, ""},
		{"GET", "/nowhere", 404, Body{"404 page not found", "not_found"}, ""},
		{"POST", "/json", 405, Body{"Method Not Allowed", "method_not_allowed"}, ""},
		{"GET", "/stream", 200, Body{}, "line 1\nline 2\n"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
		}
		if tc.body == (Body{}) {
			if string(b) != tc.raw {
				t.Errorf("%s %s: body %q, want %q", tc.method, tc.path, b, tc.raw)
			}
			continue
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", tc.method, tc.path, ct)
		}
		var got Body
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil || got != tc.body {
			t.Errorf("%s %s: body %s (%v), want %+v", tc.method, tc.path, b, err, tc.body)
		}
	}
}
