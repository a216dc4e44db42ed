package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/supervisor/logfile"
	"github.com/visorhq/visor/ui"
)

// uiHandler is the dashboard (package ui) the HTTP API serves under /ui/,
// behind the API's authentication (see uiCredentials and scopeFor). With
// the HTTP listener on, it also makes the dashboard's history (charts,
// instance state histories), which startServices runs: one more watch of
// the registry's events and one of its hosts. Without it (unix socket
// only) no browser reaches the dashboard, so no history is kept.
func (a *Agent) uiHandler() http.Handler {
	if !a.cfg.DisableHTTP && a.uiHist == nil {
		a.uiHist = ui.NewHistory(ui.HistoryConfig{Registry: a.reg, Logger: a.log.Named("ui-history")})
	}
	return ui.New(ui.Config{Registry: a.reg, Local: uiLocal{a.sup}, History: a.uiHist, Host: a.cfg.HostID, Logger: a.log.Named("ui")})
}

// uiSupervisor is what the dashboard's view of this host needs of the
// supervisor (*supervisor.Supervisor).
type uiSupervisor interface {
	Has(id string) bool
	LogPath(id, stream string) string
	Status(id string) (supervisor.Status, bool)
}

// uiLocal gives the dashboard the logs and usage of this host's instances.
type uiLocal struct{ sup uiSupervisor }

var _ ui.Local = uiLocal{}

// Has reports whether the supervisor here has the instance.
func (l uiLocal) Has(id string) bool { return l.sup.Has(id) }

// Logs streams an instance's log as GET /v1/instances/{id}/logs does.
func (l uiLocal) Logs(ctx context.Context, id, stream string, tail int, follow bool, w io.Writer) error {
	if !l.sup.Has(id) {
		return ui.ErrNotLocal
	}
	path := l.sup.LogPath(id, stream)
	err := logfile.Options{}.Stream(ctx, path, tail, follow, w)
	if errors.Is(err, os.ErrNotExist) && follow {
		err = logfile.Follow(ctx, path, false, w)
	}
	return err
}

// Usage is the supervisor's on-demand reading of the instance's process.
func (l uiLocal) Usage(id string) (float64, uint64, bool) {
	st, ok := l.sup.Status(id)
	if !ok || st.PID == 0 {
		return 0, 0, false
	}
	return st.CPUPercent, st.RSSBytes, true
}

// uiCredentials adapts the HTTP API's bearer-token rule to a browser on
// /ui/: the token may come from the dashboard's cookie (ui.CookieToken),
// the login page and the assets are open, and a browser without a valid
// token is sent to the login page rather than answered in JSON. It
// returns the Authorization header to check, or done when it answered.
func (a *Agent) uiCredentials(w http.ResponseWriter, r *http.Request, header string, next http.Handler) (string, bool) {
	p := r.URL.Path
	if p == ui.LoginPath || strings.HasPrefix(p, "/ui/assets/") {
		next.ServeHTTP(w, r)
		return "", true
	}
	if header != "" {
		return header, false
	}
	tok := ui.CookieToken(r)
	switch {
	case tok == "" && a.auth.insecure:
		return "", false
	case tok == "":
		http.Redirect(w, r, ui.LoginPath+"?error=missing", http.StatusSeeOther)
		return "", true
	}
	if _, ok := a.auth.token(tok); !ok {
		http.Redirect(w, r, ui.LoginPath+"?error=token", http.StatusSeeOther)
		return "", true
	}
	return "Bearer " + tok, false
}

// uiScope is the scope a dashboard request needs: none for the login page
// and the assets, logs for an instance's log, read for any other page, and
// operator for every action (a POST).
func uiScope(r *http.Request) (scopeSet, string) {
	p := r.URL.Path
	get := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case p == ui.LoginPath || strings.HasPrefix(p, "/ui/assets/"):
		return 0, "the dashboard's login"
	case get && strings.HasPrefix(p, "/ui/instances/") && strings.HasSuffix(p, "/logs"):
		return bitLogs, "reading logs"
	case get:
		return bitRead, "reading the dashboard"
	}
	return bitOperator, "acting from the dashboard"
}
