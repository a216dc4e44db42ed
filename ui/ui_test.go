package ui

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(etcdtest.WithShared(m))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(time.Minute))
	t.Cleanup(cancel)
	return ctx
}

// fakeLocal is a Local whose one instance's log is given lines.
type fakeLocal struct {
	id    string
	lines []string
}

func (f fakeLocal) Logs(ctx context.Context, id, stream string, tail int, follow bool, w io.Writer) error {
	if id != f.id {
		return ErrNotLocal
	}
	for _, l := range f.lines {
		if _, err := io.WriteString(w, stream+": "+l+"\n"); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

func (f fakeLocal) Has(id string) bool { return id == f.id }

func (f fakeLocal) Usage(id string) (float64, uint64, bool) { return 12.5, 3 << 20, id == f.id }

// fixture is a registry with app "demo" (rev v1, proc web, whose command
// holds HTML), two live hosts, and the dashboard served over httptest.
type fixture struct {
	reg  *registry.Registry
	srv  *httptest.Server
	hist *History // not running: tests feed it (or run it) themselves
}

func newFixture(t *testing.T, local Local) *fixture {
	t.Helper()
	ctx := testCtx(t)
	reg := registry.New(etcdtest.Shared(t).Client(t), etcdtest.Prefix(t), nil)
	for _, h := range []string{"h1", "h2"} {
		s, err := reg.RegisterHost(ctx, registry.Host{ID: h, Capacity: 10, Version: "test", Resources: &registry.HostResources{MemoryBytes: 1 << 30, CPUMillis: 2000}}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(context.Background()) })
	}
	if _, err := reg.RegisterApp(ctx, registry.App{Name: "demo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.RegisterRevision(ctx, registry.Revision{App: "demo", Name: "v1", Dir: "/srv/demo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.SetProcType(ctx, registry.ProcType{App: "demo", Name: "web", Command: "echo '<script>alert(1)</script>'"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetEnv(ctx, "demo", map[string]string{"SECRET_KEY": "hunter2"}); err != nil {
		t.Fatal(err)
	}
	hist := NewHistory(HistoryConfig{Registry: reg})
	srv := httptest.NewServer(New(Config{Registry: reg, Local: local, History: hist, Host: "h1", Logger: hclog.New(&hclog.LoggerOptions{Output: testWriter{t}})}))
	t.Cleanup(srv.Close)
	return &fixture{reg: reg, srv: srv, hist: hist}
}

func (f *fixture) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(f.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func (f *fixture) post(t *testing.T, path string, form url.Values, hdr ...string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Location")
}

func mustContain(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Fatalf("page lacks %q:\n%s", w, body)
		}
	}
}

func TestOverviewCountsEqualRegistry(t *testing.T) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	if _, err := f.reg.Scale(ctx, "demo", "v1", "web", 3); err != nil {
		t.Fatal(err)
	}
	insts, err := f.reg.Instances(ctx)
	if err != nil {
		t.Fatal(err)
	}
	code, body := f.get(t, "/ui/")
	if code != http.StatusOK {
		t.Fatalf("GET /ui/: %d", code)
	}
	mustContain(t, body,
		`data-count="hosts">2<`, `data-count="apps">1<`,
		fmt.Sprintf(`data-count="live">%d<`, len(insts)),
		fmt.Sprintf(`data-count="starting">%d<`, len(insts)),
		`data-count="running">0<`,
		`data-scale="demo/v1/web"`, `data-col="desired">3<`,
		`href="/ui/hosts/h1"`, `href="/ui/hosts/h2"`)
	if len(insts) != 3 {
		t.Fatalf("registry has %d instances after scaling to 3", len(insts))
	}
}

func TestPagesAndPartial(t *testing.T) {
	f := newFixture(t, fakeLocal{})
	for _, p := range []string{"/ui/", "/ui/apps/demo", "/ui/hosts/h1", "/ui/events", "/ui/login"} {
		t.Run(p, func(t *testing.T) {
			code, body := f.get(t, p)
			if code != http.StatusOK {
				t.Fatalf("GET %s: %d\n%s", p, code, body)
			}
			mustContain(t, body, "<!doctype html>", `<main id="main"`, `/ui/assets/ui.js`)
			req, _ := http.NewRequest(http.MethodGet, f.srv.URL+p, nil)
			req.Header.Set("X-Visor-Partial", "1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), "<!doctype") || !strings.Contains(string(b), "<h1>") {
				t.Fatalf("partial %s is not just <main>'s content:\n%s", p, b)
			}
		})
	}
	for _, a := range []string{"ui.js", "ui.css"} {
		if code, _ := f.get(t, "/ui/assets/"+a); code != http.StatusOK {
			t.Fatalf("asset %s: %d", a, code)
		}
	}
}

func TestAppPageEscapesAndHidesEnvValues(t *testing.T) {
	f := newFixture(t, nil)
	_, body := f.get(t, "/ui/apps/demo")
	mustContain(t, body, "&lt;script&gt;alert(1)&lt;/script&gt;", "SECRET_KEY")
	if strings.Contains(body, "<script>alert") {
		t.Fatal("a process command's <script> reached the page unescaped")
	}
	if strings.Contains(body, "hunter2") {
		t.Fatal("the app page shows an env value")
	}
}

func TestUnknownIs404Page(t *testing.T) {
	f := newFixture(t, nil)
	for path, want := range map[string]string{
		"/ui/apps/nope":             `There is no app &#34;nope&#34;`,
		"/ui/apps/BAD%3Cscript%3E":  `There is no app &#34;BAD&lt;script&gt;&#34;`,
		"/ui/hosts/nope":            `There is no live host &#34;nope&#34;`,
		"/ui/instances/nope-1":      `There is no instance &#34;nope-1&#34;`,
		"/ui/no/such/page":          `There is no page at /ui/no/such/page`,
		"/ui/instances/nope-1/logs": `This agent serves no logs`,
	} {
		t.Run(path, func(t *testing.T) {
			code, body := f.get(t, path)
			if code != http.StatusNotFound {
				t.Fatalf("GET %s: %d, want 404", path, code)
			}
			mustContain(t, body, "<h1>Not found</h1>", want)
		})
	}
}

func TestScaleAsksThenActs(t *testing.T) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	form := url.Values{"rev": {"v1"}, "proc": {"web"}, "n": {"2"}, "back": {"/ui/apps/demo"}}
	code, body, _ := f.post(t, "/ui/apps/demo/scale", form)
	if code != http.StatusOK {
		t.Fatalf("first POST: %d", code)
	}
	mustContain(t, body, "Scale demo/v1/web to 2 instances?", `name="confirm" value="yes"`)
	if n, _ := f.reg.CurrentScale(ctx, "demo", "v1", "web"); n != 0 {
		t.Fatalf("scale is %d before confirmation", n)
	}
	form.Set("confirm", "yes")
	code, _, loc := f.post(t, "/ui/apps/demo/scale", form)
	if code != http.StatusSeeOther || loc != "/ui/apps/demo" {
		t.Fatalf("confirmed POST: %d to %q", code, loc)
	}
	if n, err := f.reg.CurrentScale(ctx, "demo", "v1", "web"); n != 2 {
		t.Fatalf("scale is %d (%v), want 2", n, err)
	}
	form.Set("n", "-1")
	if code, body, _ := f.post(t, "/ui/apps/demo/scale", form); code != http.StatusBadRequest {
		t.Fatalf("n=-1: %d\n%s", code, body)
	}
	form.Set("n", "1")
	form.Set("proc", "nope")
	code, body, _ = f.post(t, "/ui/apps/demo/scale", form)
	if code != http.StatusNotFound && code != http.StatusBadRequest {
		t.Fatalf("unknown proc: %d\n%s", code, body)
	}
	mustContain(t, body, "Scaling demo/v1/nope to 1")
}

func TestNothingActsOnGET(t *testing.T) {
	f := newFixture(t, nil)
	for _, p := range []string{"/ui/apps/demo/scale?rev=v1&proc=web&n=5&confirm=yes", "/ui/hosts/h1/drain?confirm=yes"} {
		if code, _ := f.get(t, p); code == http.StatusOK || code == http.StatusSeeOther {
			t.Fatalf("GET %s: %d", p, code)
		}
	}
	ctx := testCtx(t)
	if n, _ := f.reg.CurrentScale(ctx, "demo", "v1", "web"); n != 0 {
		t.Fatalf("a GET scaled to %d", n)
	}
	if d, _ := f.reg.Drains(ctx); len(d) != 0 {
		t.Fatalf("a GET drained: %v", d)
	}
}

func TestActionOnGoneInstance(t *testing.T) {
	f := newFixture(t, nil)
	for _, op := range []string{"restart", "stop", "signal"} {
		form := url.Values{"confirm": {"yes"}, "signal": {"HUP"}}
		code, body, _ := f.post(t, "/ui/instances/demo-web-gone1/"+op, form)
		if code != http.StatusNotFound {
			t.Fatalf("%s of a gone instance: %d\n%s", op, code, body)
		}
		mustContain(t, body, "Instance demo-web-gone1 is gone (no longer in the registry); nothing was sent")
	}
}

func TestRestartPendingInstanceIsRefusedClearly(t *testing.T) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	if _, err := f.reg.Scale(ctx, "demo", "v1", "web", 1); err != nil {
		t.Fatal(err)
	}
	insts, _ := f.reg.Instances(ctx)
	code, body, _ := f.post(t, "/ui/instances/"+insts[0].ID+"/restart", url.Values{"confirm": {"yes"}})
	if code != http.StatusBadRequest {
		t.Fatalf("restart of a pending instance: %d", code)
	}
	mustContain(t, body, "is not on a host yet")
}

func TestDrainUndrain(t *testing.T) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	code, body, _ := f.post(t, "/ui/hosts/h1/drain", url.Values{"back": {"/ui/hosts/h1"}})
	if code != http.StatusOK {
		t.Fatalf("drain without confirm: %d", code)
	}
	mustContain(t, body, "Drain host h1?")
	code, _, loc := f.post(t, "/ui/hosts/h1/drain", url.Values{"confirm": {"yes"}, "back": {"/ui/hosts/h1"}})
	if code != http.StatusSeeOther || loc != "/ui/hosts/h1" {
		t.Fatalf("drain: %d %q", code, loc)
	}
	if d, _ := f.reg.Drains(ctx); len(d) != 1 {
		t.Fatalf("drains after drain: %v", d)
	}
	code, body, _ = f.post(t, "/ui/hosts/h2/drain", url.Values{"confirm": {"yes"}})
	if code != http.StatusConflict {
		t.Fatalf("drain of the last host: %d", code)
	}
	mustContain(t, body, "Could not drain host h2")
	if code, _, _ := f.post(t, "/ui/hosts/h1/undrain", url.Values{"confirm": {"yes"}}); code != http.StatusSeeOther {
		t.Fatalf("undrain: %d", code)
	}
	if d, _ := f.reg.Drains(ctx); len(d) != 0 {
		t.Fatalf("drains after undrain: %v", d)
	}
}

func TestCrossSitePostRefused(t *testing.T) {
	f := newFixture(t, nil)
	form := url.Values{"confirm": {"yes"}, "rev": {"v1"}, "proc": {"web"}, "n": {"4"}}
	for _, hdr := range [][]string{{"Origin", "http://evil.example"}, {"Sec-Fetch-Site", "cross-site"}} {
		code, _, _ := f.post(t, "/ui/apps/demo/scale", form, hdr...)
		if code != http.StatusForbidden {
			t.Fatalf("POST with %s %s: %d", hdr[0], hdr[1], code)
		}
	}
	if n, _ := f.reg.CurrentScale(testCtx(t), "demo", "v1", "web"); n != 0 {
		t.Fatalf("a cross-site POST scaled to %d", n)
	}
}

// readEvent reads server-sent event blocks until one of type typ, and
// returns its data.
func readEvent(t *testing.T, rd *bufio.Reader, typ string) string {
	t.Helper()
	var ev, data string
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream ended before a %q event: %v", typ, err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "event: "):
			ev = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		case line == "":
			if ev == typ {
				return data
			}
			ev, data = "", ""
		}
	}
}

func openStream(t *testing.T, url string, opening bool) *bufio.Reader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rd := bufio.NewReader(resp.Body)
	if !opening {
		return rd
	}
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, ":") {
		t.Fatalf("stream did not open: %q %v", line, err)
	}
	return rd
}

func TestLiveStreamCarriesRegistryChanges(t *testing.T) {
	f := newFixture(t, nil)
	rd := openStream(t, f.srv.URL+"/ui/live", true)
	if _, err := f.reg.Scale(testCtx(t), "demo", "v1", "web", 1); err != nil {
		t.Fatal(err)
	}
	data := readEvent(t, rd, "change")
	if !strings.Contains(data, `"app":"demo"`) {
		t.Fatalf("first change after scaling is %s", data)
	}
}

func TestLogStreamLinesAndLocality(t *testing.T) {
	f := newFixture(t, fakeLocal{id: "demo-web-1", lines: []string{"hello", "<script>alert(2)</script>"}})
	rd := openStream(t, f.srv.URL+"/ui/instances/demo-web-1/logs?stream=stderr", true)
	if got := readEvent(t, rd, "line"); got != "stderr: hello" {
		t.Fatalf("first line %q", got)
	}
	if got := readEvent(t, rd, "line"); got != "stderr: <script>alert(2)</script>" {
		t.Fatalf("second line %q", got)
	}
	code, body := f.get(t, "/ui/instances/demo-web-2/logs")
	if code != http.StatusNotFound {
		t.Fatalf("log of a non-local instance: %d", code)
	}
	mustContain(t, body, "does not run on this host")
	if code, _ := f.get(t, "/ui/instances/demo-web-1/logs?stream=both"); code != http.StatusBadRequest {
		t.Fatalf("stream=both: %d", code)
	}
}

// TestEmptyLogStreamOpens: a log nothing was written to yet (a quiet
// stderr) opens its stream at once, so the page says it follows it.
func TestEmptyLogStreamOpens(t *testing.T) {
	f := newFixture(t, fakeLocal{id: "demo-web-1"})
	openStream(t, f.srv.URL+"/ui/instances/demo-web-1/logs?stream=stderr", true)
}

func TestLineWriterJoinsPartialLines(t *testing.T) {
	var b strings.Builder
	lw := &lineWriter{w: &b, flush: func() error { return nil }}
	for _, s := range []string{"ab", "c\r\nde", "f\n\nx"} {
		lw.Write([]byte(s))
	}
	want := "event: line\ndata: abc\n\nevent: line\ndata: def\n\nevent: line\ndata: \n\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
}

// testWriter routes log output to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestHostPageShowsDrain(t *testing.T) {
	f := newFixture(t, nil)
	if _, err := f.reg.Drain(testCtx(t), "h1", 0); err != nil {
		t.Fatal(err)
	}
	_, body := f.get(t, "/ui/hosts/h1")
	mustContain(t, body, `data-field="state">draining<`, `id="undrain"`)
	_, body = f.get(t, "/ui/")
	mustContain(t, body, `draining</span>`)
}

// TestThousandInstances renders the overview and the app page of 1000
// instances and checks they are all counted and listed; the time each
// page took is logged (no timed assertion: see BENCHMARKS.md habits).
func TestThousandInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 instances: not under -short")
	}
	f := newFixture(t, nil)
	ctx := testCtx(t)
	for _, h := range []string{"big1", "big2"} {
		s, err := f.reg.RegisterHost(ctx, registry.Host{ID: h, Capacity: 600}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(context.Background()) })
	}
	if _, err := f.reg.Scale(ctx, "demo", "v1", "web", 1000); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, body := f.get(t, "/ui/")
	t.Logf("overview of 1000 instances: %s", time.Since(start))
	mustContain(t, body, `data-count="live">1000<`, `data-col="desired">1000<`)
	start = time.Now()
	_, body = f.get(t, "/ui/apps/demo")
	t.Logf("app page listing 1000 instances: %s, %d bytes", time.Since(start), len(body))
	if n := strings.Count(body, `<tr data-instance=`); n != 1000 {
		t.Fatalf("app page lists %d instances, want 1000", n)
	}
}

// TestAppPageSaysReleasedOrDraft: the app page says which revisions are
// released (with their release's process types) and which are drafts.
func TestAppPageSaysReleasedOrDraft(t *testing.T) {
	f := newFixture(t, nil)
	ctx := testCtx(t)
	_, body := f.get(t, "/ui/apps/demo")
	mustContain(t, body, "· draft")
	if _, err := f.reg.Scale(ctx, "demo", "v1", "web", 1); err != nil {
		t.Fatal(err)
	}
	_, body = f.get(t, "/ui/apps/demo")
	mustContain(t, body, "· released ", "<code>web</code>", "taken by its next release")
}
