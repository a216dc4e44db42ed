package discovery

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client is the Go client of an agent's discovery HTTP API, for programs
// that register themselves and look services up.
type Client struct {
	// BaseURL of the agent's API, e.g. "http://127.0.0.1:7070".
	BaseURL string
	// Token, when set, is sent as "Authorization: Bearer <Token>".
	Token string
	// HTTP is the client used; nil means http.DefaultClient.
	HTTP *http.Client
}

// APIError is a non-2xx answer of the API. errors.Is matches it against
// ErrInvalid (400), ErrForbidden (403), ErrUnknown (404), ErrTooLarge (413)
// and ErrLimit (429).
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Message is the server's "error" text.
	Message string
}

// Error formats the status and the server's message.
func (e *APIError) Error() string {
	return fmt.Sprintf("discovery api: %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Unwrap returns the sentinel of the status class, or nil.
func (e *APIError) Unwrap() error {
	switch e.Status {
	case http.StatusBadRequest:
		return ErrInvalid
	case http.StatusForbidden:
		return ErrForbidden
	case http.StatusNotFound:
		return ErrUnknown
	case http.StatusRequestEntityTooLarge:
		return ErrTooLarge
	case http.StatusTooManyRequests:
		return ErrLimit
	}
	return nil
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) url(path string, q url.Values) string {
	u := strings.TrimSuffix(c.BaseURL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func servicePath(name string, rest ...string) string {
	p := "/v1/services/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// do sends a request and decodes a 2xx JSON answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, u string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return apiError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, u, err)
	}
	return nil
}

func apiError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb errorBody
	if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
		eb.Error = strings.TrimSpace(string(b))
	}
	return &APIError{Status: resp.StatusCode, Message: eb.Error}
}

// Register registers an endpoint of service name ("name" or
// "name@version") and returns the registration: its ID, TTL and how often
// to renew it.
func (c *Client) Register(ctx context.Context, name string, req RegisterRequest) (Registration, error) {
	var out Registration
	err := c.do(ctx, http.MethodPost, c.url(servicePath(name), nil), req, &out)
	return out, err
}

// Renew renews registration id of service; ErrUnknown (via APIError) when
// it has expired or was never made.
func (c *Client) Renew(ctx context.Context, service, id string) (Registration, error) {
	var out Registration
	err := c.do(ctx, http.MethodPut, c.url(servicePath(service, id), nil), nil, &out)
	return out, err
}

// Free deregisters registration id of service.
func (c *Client) Free(ctx context.Context, service, id string) error {
	return c.do(ctx, http.MethodDelete, c.url(servicePath(service, id), nil), nil, nil)
}

// Lookup returns the endpoints of name matching versionOrRange ("" = any),
// only healthy ones when healthyOnly.
func (c *Client) Lookup(ctx context.Context, name, versionOrRange string, healthyOnly bool) ([]Endpoint, error) {
	resp, err := c.LookupRevision(ctx, name, versionOrRange, healthyOnly)
	return resp.Endpoints, err
}

// LookupRevision is Lookup with the whole answer, including the revision
// to watch from (Watch(ctx, name, resp.Revision)).
func (c *Client) LookupRevision(ctx context.Context, name, versionOrRange string, healthyOnly bool) (LookupResponse, error) {
	q := url.Values{}
	if versionOrRange != "" {
		q.Set("version", versionOrRange)
	}
	if healthyOnly {
		q.Set("healthy", "1")
	}
	var out LookupResponse
	err := c.do(ctx, http.MethodGet, c.url(servicePath(name), q), nil, &out)
	return out, err
}

// Keep registers an endpoint and renews it every RenewEvery until ctx
// ends, then frees it. When a renewal finds the registration gone (the
// agent restarted, or a renewal came too late) it registers again. It
// returns nil after ctx ends, or the first registration error that is not
// temporary (an APIError other than 5xx).
func (c *Client) Keep(ctx context.Context, name string, req RegisterRequest) error {
	reg, err := c.Register(ctx, name, req)
	if err != nil {
		return err
	}
	service, _ := SplitNameVersion(name)
	timer := time.NewTimer(time.Duration(reg.RenewEvery))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = c.Free(fctx, service, reg.ID) // best effort: the TTL removes it anyway
			return nil
		case <-timer.C:
		}
		next, err := c.Renew(ctx, service, reg.ID)
		if errors.Is(err, ErrUnknown) {
			next, err = c.Register(ctx, name, req)
		}
		var apiErr *APIError
		switch {
		case err == nil:
			reg = next
			timer.Reset(time.Duration(reg.RenewEvery))
		case errors.As(err, &apiErr) && apiErr.Status < 500:
			return err
		default:
			timer.Reset(time.Second) // transient: agent or network; retry soon
		}
	}
}

// Watch streams register/free events of service name after revision since
// (0 = from now) from the agent's server-sent events. It reconnects with
// Last-Event-ID when the stream breaks, so nothing is lost. A rejected
// request (4xx) or an error event from the server is sent as an Event with
// Err; the channel closes after it, and when ctx ends.
func (c *Client) Watch(ctx context.Context, name string, since int64) <-chan Event {
	out := make(chan Event, 64)
	go func() {
		defer close(out)
		lastID := ""
		retry := time.NewTimer(0)
		<-retry.C
		defer retry.Stop()
		for ctx.Err() == nil {
			var fatal error
			lastID, fatal = c.watchOnce(ctx, name, since, lastID, out)
			if fatal != nil {
				send(ctx, out, Event{Err: fatal})
				return
			}
			retry.Reset(time.Second)
			select {
			case <-ctx.Done():
			case <-retry.C:
			}
		}
	}()
	return out
}

// watchOnce reads one SSE connection; it returns the last event id seen and
// an error that must end the watch.
func (c *Client) watchOnce(ctx context.Context, name string, since int64, lastID string, out chan<- Event) (string, error) {
	q := url.Values{}
	if since > 0 {
		q.Set("since", strconv.FormatInt(since, 10))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(servicePath(name, "watch"), q), nil)
	if err != nil {
		return lastID, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return lastID, nil // transient; reconnect
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := apiError(resp)
		if resp.StatusCode >= 500 {
			return lastID, nil
		}
		return lastID, err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var id, typ string
	var data []byte
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			switch {
			case typ == "error":
				var eb errorBody
				_ = json.Unmarshal(data, &eb)
				return lastID, fmt.Errorf("discovery watch: %s", eb.Error)
			case len(data) > 0:
				var we WatchEvent
				if err := json.Unmarshal(data, &we); err != nil {
					return lastID, fmt.Errorf("discovery watch: decode event %s: %w", id, err)
				}
				if !send(ctx, out, Event{Type: we.Type, Endpoint: we.Endpoint, Revision: we.Revision}) {
					return lastID, nil
				}
				if id != "" {
					lastID = id
				}
			}
			id, typ, data = "", "", nil
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			id = value
		case "event":
			typ = value
		case "data":
			data = append(data, value...)
		}
	}
	return lastID, nil
}
