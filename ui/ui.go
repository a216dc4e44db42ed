package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/registry"
)

//go:embed assets templates
var files embed.FS

// ErrNotLocal is what Local returns for an instance that does not run on
// the serving agent's host.
var ErrNotLocal = errors.New("ui: instance is not on this host")

// Local is what the serving agent knows about the instances on its own
// host. The agent implements it; methods are called from request
// goroutines, concurrently.
type Local interface {
	// Has reports whether the instance runs (or ran) on this host, so
	// that its logs are here.
	Has(id string) bool
	// Logs writes the last tail lines of the instance's stream ("stdout"
	// or "stderr") to w and then, if follow, every new line until ctx
	// ends. It returns ErrNotLocal for an instance not on this host.
	Logs(ctx context.Context, id, stream string, tail int, follow bool, w io.Writer) error
	// Usage returns the CPU (percent of one core) and resident memory of
	// a local instance's process; ok is false when unknown.
	Usage(id string) (cpuPercent float64, rssBytes uint64, ok bool)
}

// Config configures the dashboard.
type Config struct {
	// Registry is read for every view and written by the actions. Required.
	Registry *registry.Registry
	// Local gives the logs and resource use of this host's instances;
	// nil shows neither.
	Local Local
	// History is the past the charts and the instance state histories
	// show; its owner runs it (History.Run). nil shows neither.
	History *History
	// Host is the serving agent's host id, shown in the header.
	Host string
	// Logger defaults to hclog.NewNullLogger().
	Logger hclog.Logger
}

// Handler serves the dashboard; mount it at "/ui/".
type Handler struct {
	cfg  Config
	log  hclog.Logger
	tmpl map[string]*template.Template
	mux  *http.ServeMux
}

// New returns the dashboard's handler. It panics if the embedded
// templates do not parse (a programmer error, caught by every test).
func New(cfg Config) *Handler {
	h := &Handler{cfg: cfg, log: cfg.Logger}
	if h.log == nil {
		h.log = hclog.NewNullLogger()
	}
	h.tmpl = parseTemplates()
	h.routes()
	return h
}

var pages = []string{"overview", "app", "host", "instance", "events", "confirm", "message", "login"}

func parseTemplates() map[string]*template.Template {
	out := map[string]*template.Template{}
	for _, p := range pages {
		t := template.New("layout.html").Funcs(funcs)
		out[p] = template.Must(t.ParseFS(files, "templates/layout.html", "templates/parts.html", "templates/"+p+".html"))
	}
	return out
}

var funcs = template.FuncMap{
	"mib":      mib,
	"pct":      func(f float64) string { return fmt.Sprintf("%.1f%%", f) },
	"load":     func(f float64) string { return fmt.Sprintf("%.2f", f) },
	"since":    sinceText,
	"chart":    func(c Chart) (template.HTML, error) { return c.HTML() },
	"clock":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"restarts": restartCount,
}

func (h *Handler) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(files, "assets")
	m.Handle("GET /ui/assets/", http.StripPrefix("/ui/assets/", assetServer(static)))
	m.HandleFunc("GET /ui/{$}", h.overview)
	m.HandleFunc("GET /ui/apps/{app}", h.app)
	m.HandleFunc("GET /ui/hosts/{host}", h.host)
	m.HandleFunc("GET /ui/instances/{id}", h.instance)
	m.HandleFunc("GET /ui/instances/{id}/logs", h.logs)
	m.HandleFunc("GET /ui/events", h.events)
	m.HandleFunc("GET /ui/live", h.live)
	m.HandleFunc("GET /ui/login", h.loginPage)
	m.HandleFunc("POST /ui/login", h.login)
	m.HandleFunc("POST /ui/apps/{app}/scale", h.actScale)
	m.HandleFunc("POST /ui/apps/{app}/deploy/{op}", h.actDeploy)
	m.HandleFunc("POST /ui/instances/{id}/{op}", h.actInstance)
	m.HandleFunc("POST /ui/hosts/{host}/{op}", h.actHost)
	m.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		h.notFound(w, r, "There is no page at "+r.URL.Path+".")
	})
	h.mux = m
}

// ServeHTTP serves the dashboard. Every response forbids framing and
// inline or foreign scripts (Content-Security-Policy).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin")
	if r.Method == http.MethodPost && crossSite(r) {
		h.message(w, r, http.StatusForbidden, "Refused", "This action came from another site; open the dashboard itself and act there.")
		return
	}
	h.mux.ServeHTTP(w, r)
}

// crossSite reports whether a POST comes from a page of another origin.
func crossSite(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return true
	}
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return o == "null"
	}
	_, host, _ := strings.Cut(o, "://")
	return host != r.Host
}

func assetServer(static fs.FS) http.Handler {
	fsrv := http.FileServerFS(static)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		fsrv.ServeHTTP(w, r)
	})
}

// page is what every template gets.
type page struct {
	Title   string
	Nav     string
	Host    string
	Partial bool
	Data    any
}

// render writes a page, or only its <main> when the script asks for it
// (header X-Visor-Partial) to swap in a live update.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, code int, name, title string, data any) {
	p := page{Title: title, Nav: name, Host: h.cfg.Host, Partial: r.Header.Get("X-Visor-Partial") == "1", Data: data}
	var b strings.Builder
	tmpl := "layout.html"
	if p.Partial {
		tmpl = "main"
	}
	if err := h.tmpl[name].ExecuteTemplate(&b, tmpl, p); err != nil {
		h.log.Error("render page", "page", name, "error", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	io.WriteString(w, b.String())
}

// msg is the data of the message page.
type msg struct {
	Heading, Text string
	Back          string
}

func (h *Handler) message(w http.ResponseWriter, r *http.Request, code int, heading, text string) {
	h.render(w, r, code, "message", heading, msg{Heading: heading, Text: text, Back: back(r)})
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request, text string) {
	h.message(w, r, http.StatusNotFound, "Not found", text)
}

// back is where a message's "back" link leads: the page the action came
// from when it is ours, else the overview.
func back(r *http.Request) string {
	if ref := r.FormValue("back"); strings.HasPrefix(ref, "/ui/") && !strings.Contains(ref, "//") {
		return ref
	}
	return "/ui/"
}

// registryError answers a failed registry read: ErrNotFound and ErrInvalid
// (a malformed name) are the caller's, anything else is ours.
func (h *Handler) registryError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalid):
		h.notFound(w, r, fmt.Sprintf("There is no %s.", what))
	default:
		h.log.Warn("registry read failed", "what", what, "error", err)
		h.message(w, r, http.StatusServiceUnavailable, "Registry unavailable", fmt.Sprintf("Reading %s failed: %v", what, err))
	}
}

// mib formats a byte count (int64 or uint64) in MiB.
func mib(b any) string {
	var f float64
	switch v := b.(type) {
	case int64:
		f = float64(v)
	case uint64:
		f = float64(v)
	case int:
		f = float64(v)
	}
	return fmt.Sprintf("%.1f MiB", f/(1<<20))
}
