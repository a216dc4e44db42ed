package ui

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/visorhq/visor/registry"
)

// CookieName is the cookie /ui/login sets to the token a browser
// presents (see the package doc).
const CookieName = "visor_token"

// LoginPath is the login page; the agent serves it without a token.
const LoginPath = "/ui/login"

// CookieToken returns the token of the dashboard's cookie in r, or "".
func CookieToken(r *http.Request) string {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return ""
	}
	v, err := url.QueryUnescape(c.Value)
	if err != nil {
		return ""
	}
	return v
}

// confirmData is the confirmation page of an action.
type confirmData struct {
	Question string
	Action   string
	Fields   []field
	Back     string
	Danger   bool
}

type field struct{ Name, Value string }

// confirmed reports whether the POST carries confirm=yes; if not, it
// answers with the confirmation page, whose form posts the same fields
// again with confirm=yes.
func (h *Handler) confirmed(w http.ResponseWriter, r *http.Request, question string, danger bool, names ...string) bool {
	if r.PostFormValue("confirm") == "yes" {
		return true
	}
	d := confirmData{Question: question, Action: r.URL.Path, Back: back(r), Danger: danger}
	for _, n := range names {
		d.Fields = append(d.Fields, field{n, r.PostFormValue(n)})
	}
	d.Fields = append(d.Fields, field{"back", d.Back})
	h.render(w, r, http.StatusOK, "confirm", "Confirm", d)
	return false
}

// done sends the browser back to the page the action came from.
func (h *Handler) done(w http.ResponseWriter, r *http.Request, to string) {
	if b := back(r); b != "/ui/" || to == "" {
		to = b
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// actionError answers a failed action with a message naming what went
// wrong: a gone record is 404, a refused change 409, bad input 400.
func (h *Handler) actionError(w http.ResponseWriter, r *http.Request, what string, err error) {
	code, head := http.StatusServiceUnavailable, "Action failed"
	switch {
	case errors.Is(err, registry.ErrNotFound):
		code, head = http.StatusNotFound, "Gone"
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrLastHost):
		code, head = http.StatusConflict, "Refused"
	case errors.Is(err, registry.ErrInvalid):
		code, head = http.StatusBadRequest, "Refused"
	}
	h.log.Info("ui action failed", "action", what, "error", err)
	h.message(w, r, code, head, fmt.Sprintf("%s: %v", what, err))
}

func (h *Handler) actScale(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("app")
	rev, proc := r.PostFormValue("rev"), r.PostFormValue("proc")
	nv := strings.TrimSpace(r.PostFormValue("n"))
	n, err := strconv.Atoi(nv)
	if err != nil || n < 0 {
		h.message(w, r, http.StatusBadRequest, "Bad request", fmt.Sprintf("The instance count must be a whole number, 0 or more, not %q.", nv))
		return
	}
	q := fmt.Sprintf("Scale %s/%s/%s to %d instances?", app, rev, proc, n)
	if !h.confirmed(w, r, q, n == 0, "rev", "proc", "n") {
		return
	}
	if _, err := h.cfg.Registry.Scale(r.Context(), app, rev, proc, n); err != nil {
		h.actionError(w, r, fmt.Sprintf("Scaling %s/%s/%s to %d", app, rev, proc, n), err)
		return
	}
	h.done(w, r, "/ui/apps/"+url.PathEscape(app))
}

func (h *Handler) actInstance(w http.ResponseWriter, r *http.Request) {
	id, op := r.PathValue("id"), r.PathValue("op")
	t := registry.Ticket{Instance: id}
	var q string
	switch op {
	case "restart":
		t.Op, q = registry.TicketRestart, fmt.Sprintf("Restart instance %s?", id)
	case "stop":
		t.Op, q = registry.TicketStop, fmt.Sprintf("Stop instance %s? Its scale is not changed, so the reconciler starts a replacement.", id)
	case "signal":
		t.Op, t.Signal = registry.TicketSignal, r.PostFormValue("signal")
		q = fmt.Sprintf("Send SIG%s to instance %s?", strings.TrimPrefix(t.Signal, "SIG"), id)
	default:
		h.notFound(w, r, fmt.Sprintf("There is no instance action %q.", op))
		return
	}
	if !h.confirmed(w, r, q, op != "restart", "signal") {
		return
	}
	if _, err := h.cfg.Registry.CreateTicket(r.Context(), t); err != nil {
		what := fmt.Sprintf("Could not %s instance %s", op, id)
		if errors.Is(err, registry.ErrNotFound) {
			what = fmt.Sprintf("Instance %s is gone (no longer in the registry); nothing was sent", id)
		}
		h.actionError(w, r, what, err)
		return
	}
	h.done(w, r, "/ui/instances/"+url.PathEscape(id))
}

func (h *Handler) actHost(w http.ResponseWriter, r *http.Request) {
	host, op := r.PathValue("host"), r.PathValue("op")
	var q string
	switch op {
	case "drain":
		q = fmt.Sprintf("Drain host %s? It takes no new instances, and each of its instances is replaced elsewhere, then stopped.", host)
	case "undrain":
		q = fmt.Sprintf("End the drain of host %s? It takes new instances again.", host)
	default:
		h.notFound(w, r, fmt.Sprintf("There is no host action %q.", op))
		return
	}
	if !h.confirmed(w, r, q, op == "drain") {
		return
	}
	var err error
	if op == "drain" {
		_, err = h.cfg.Registry.Drain(r.Context(), host, 0)
	} else {
		err = h.cfg.Registry.Undrain(r.Context(), host)
	}
	if err != nil {
		h.actionError(w, r, fmt.Sprintf("Could not %s host %s", op, host), err)
		return
	}
	h.done(w, r, "/ui/hosts/"+url.PathEscape(host))
}

type loginData struct{ Error string }

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	var d loginData
	switch r.URL.Query().Get("error") {
	case "token":
		d.Error = "That token is not one this agent knows."
	case "missing":
		d.Error = "This dashboard needs a token."
	}
	h.render(w, r, http.StatusOK, "login", "Sign in", d)
}

// login keeps the token in a cookie for this dashboard only; the agent
// checks it on the next request (and sends the browser back here if it
// is wrong).
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if tok == "" {
		http.Redirect(w, r, LoginPath+"?error=missing", http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: url.QueryEscape(tok), Path: "/ui/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}
