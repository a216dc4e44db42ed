package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// chromium finds the browser the project's test setup installs (Debian's
// chromium, see `make test-deps`); the test skips, saying so, without one.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium found (chromium, chromium-browser, google-chrome): run `make test-deps` as root to install Debian's chromium; the dashboard's browser test needs it")
	return ""
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().String()
}

// browser starts a headless Chromium for the test. It dies with the test:
// its context is cancelled (chromedp then kills and waits for it) at
// cleanup, and Pdeathsig kills it should the test process die first.
func browser(t *testing.T, exe string) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // root in CI containers
		chromedp.WindowSize(1280, 900),
		chromedp.WSURLReadTimeout(testtime.Scaled(90*time.Second)), // a loaded machine starts it slowly
		chromedp.UserDataDir(t.TempDir()),
		chromedp.ModifyCmdFunc(func(cmd *exec.Cmd) {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		}),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelB := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelB(); cancelA() })
	must(t, chromedp.Do(bctx)) // start it now (no timeout on this first run: it would bound the browser)
	ctx, cancelT := context.WithTimeout(bctx, testtime.Scaled(4*time.Minute))
	t.Cleanup(cancelT)
	return ctx
}

// shot writes a full-page screenshot of the current page to the test's
// artifact directory (go test -artifacts keeps it; see README).
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 is PNG
	must(t, err)
	p := filepath.Join(t.ArtifactDir(), name+".png")
	must(t, os.WriteFile(p, png, 0o644))
	t.Logf("screenshot %s", p)
}

// waitJS waits, in the browser, until expr is true (polled by the page
// itself), with a deadline.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	ok, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(testtime.Scaled(90*time.Second))))
	if err != nil || !ok {
		body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
		t.Fatalf("%s: %v; page shows:\n%s", what, err, body)
	}
}

func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	// In the page's own JavaScript: a live update may swap the node
	// between a lookup by node id and a read of it.
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q).textContent.trim()`, sel)))
	must(t, err)
	return s
}

// clickJS clicks the element with id in the page's JavaScript (see textOf).
func clickJS(id string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.getElementById(%q).click()`, id))
}

// uiWorkload prints a <script> line, "ready", one line per SIGUSR1 on
// stdout and one per SIGUSR2 on stderr.
const uiWorkload = `trap 'echo "got USR1"' USR1; trap 'echo "got USR2 on stderr" >&2' USR2; echo '<script>document.title="pwned"</script>'; echo ready; while :; do sleep 1 & wait $!; done`

// TestDashboardInBrowser drives the dashboard (package ui) in a real
// headless Chromium against two real agents on a real etcd (issue 19):
// the overview's counts equal the registry; scaling from the page shows
// the instances running without a reload; an instance's log shows a line
// the workload prints after the page opened, on stdout and, switched to
// stderr, on stderr; a <script> log line is inert text; the instance page
// shows its state history; the overview, app and host pages show their
// charts (inline SVG with a title and a description); draining a host
// from the page shows it draining. Each view's screenshot is an artifact.
func TestDashboardInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test: not under -short")
	}
	exe := chromium(t)
	c := newCluster(t)
	ctx := c.ctx
	must(t, err2(c.reg.RegisterApp(ctx, registry.App{Name: "demo"})))
	must(t, c.reg.SetEnv(ctx, "demo", map[string]string{"VISOR_E2E": c.runID}))
	must(t, err2(c.reg.RegisterRevision(ctx, registry.Revision{App: "demo", Name: "v1", Dir: os.TempDir()})))
	must(t, err2(c.reg.SetProcType(ctx, registry.ProcType{App: "demo", Name: "web", Command: uiWorkload,
		StopTimeout: registry.Duration(3 * time.Second)})))
	addrs := map[string]string{"ui-a": freeAddr(t), "ui-b": freeAddr(t)}
	for h, addr := range addrs {
		c.startAgent(h, "-http-addr", addr, "-insecure-http")
	}
	_, err := c.reg.Scale(ctx, "demo", "v1", "web", 1)
	must(t, err)
	c.waitSettled("demo", 1, 60*time.Second)
	b := browser(t, exe)
	base := "http://" + addrs["ui-a"]

	overviewCounts(t, c, b, base)
	id := scaleFromPage(t, c, b, base)
	followLog(t, c, b, addrs, id)
	deployFromPage(t, c, b, base)
	drainFromPage(t, c, b, base)

	// By now the history has sampled demo's instances (the first
	// sample may predate the scale; the next comes within 10 s).
	must(t, chromedp.Do(b, chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`[data-count="hosts"]`))))
	chartShown(t, b, "app-demo", "Running instances of demo")
	shot(t, b, "overview-charts")

	must(t, chromedp.Do(b, chromedp.Navigate(base+"/ui/events"), chromedp.WaitVisible(chromedp.CSS("#events li"))))
	shot(t, b, "events")
	must(t, chromedp.Do(b, chromedp.Navigate(base+"/ui/apps/no-such-app"), chromedp.WaitVisible(chromedp.CSS("#message"))))
	if h := textOf(t, b, "h1"); h != "Not found" {
		t.Fatalf("unknown app page heading %q", h)
	}
	shot(t, b, "not-found")
}

func overviewCounts(t *testing.T, c *cluster, b context.Context, base string) {
	must(t, chromedp.Do(b, chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`[data-count="hosts"]`))))
	waitJS(t, b, "live stream opens", `document.getElementById("live-status").textContent === "live"`)
	hosts, err := c.reg.Hosts(c.ctx)
	must(t, err)
	insts, err := c.reg.Instances(c.ctx)
	must(t, err)
	live, running := 0, 0
	for _, in := range insts {
		if in.State.Live() {
			live++
		}
		if in.State == registry.InstanceRunning {
			running++
		}
	}
	for sel, want := range map[string]int{`[data-count="hosts"]`: len(hosts), `[data-count="live"]`: live, `[data-count="running"]`: running} {
		if got := textOf(t, b, sel); got != strconv.Itoa(want) {
			t.Errorf("overview %s = %s, registry says %d", sel, got, want)
		}
	}
	shot(t, b, "overview")
}

// scaleFromPage scales demo/v1/web to 3 from the app page. An overview
// opened in another tab before the scale must show the 3 running by a
// live update, without a reload (the app page itself may load after they
// started). It returns one of the instances.
func scaleFromPage(t *testing.T, c *cluster, b context.Context, base string) string {
	watch, cancel := chromedp.NewContext(b) // a second tab of the same browser
	defer cancel()
	running := `document.querySelector('[data-count="running"]').textContent`
	must(t, chromedp.Do(watch, chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`[data-count="running"]`))))
	waitJS(t, watch, "overview tab live", `document.getElementById("live-status").textContent === "live" && `+running+` === "1"`)
	must(t, err2(chromedp.Run(watch, chromedp.Evaluate[chromedp.Void](`window.sameDocument = true`))))

	row := `tr[data-scale="demo/v1/web"] `
	must(t, chromedp.Do(b,
		chromedp.Navigate(base+"/ui/apps/demo"),
		chromedp.WaitVisible(chromedp.CSS(`#n-v1-web`)),
		chromedp.Evaluate[chromedp.Void](`(() => { const n = document.getElementById("n-v1-web"); n.value = "3"; n.form.requestSubmit() })()`),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
	))
	if q := textOf(t, b, "#question"); q != "Scale demo/v1/web to 3 instances?" {
		t.Fatalf("confirmation asks %q", q)
	}
	must(t, chromedp.Do(b, clickJS("confirm"), chromedp.WaitVisible(chromedp.CSS(row))))
	waitJS(t, b, "app page shows 3 running", `document.querySelector('`+row+`td[data-col="running"]').textContent === "3"`)
	waitJS(t, watch, "overview tab shows 3 running", running+` === "3"`)
	same, err := chromedp.Run(watch, chromedp.Evaluate[bool](`window.sameDocument === true`))
	must(t, err)
	refreshes, err := chromedp.Run(watch, chromedp.Evaluate[int](`window.visorRefreshes`))
	must(t, err)
	if !same || refreshes == 0 {
		t.Fatalf("the overview did not show the instances by a live update: same document %v, live refreshes %d", same, refreshes)
	}
	got := c.running("demo")
	if len(got) != 3 {
		t.Fatalf("pages show 3 running, registry has %d", len(got))
	}
	if n := textOf(t, b, `figure[data-chart="app-demo"] figcaption strong`); n != "Running instances of demo" {
		t.Fatalf("app page chart caption %q", n)
	}
	shot(t, b, "app")
	shot(t, watch, "overview-live")
	for id := range got {
		return id
	}
	return ""
}

// followLog opens an instance's page on its own host's agent, checks the
// <script> line is text, then has the workload print a line (SIGUSR1 by a
// signal ticket) and waits for it on the open page.
func followLog(t *testing.T, c *cluster, b context.Context, addrs map[string]string, id string) {
	in, err := c.reg.Instance(c.ctx, id)
	must(t, err)
	must(t, chromedp.Do(b,
		chromedp.Navigate("http://"+addrs[in.Host]+"/ui/instances/"+id),
		chromedp.WaitVisible(chromedp.CSS("#log")),
	))
	must(t, err2(chromedp.Run(b, chromedp.Evaluate[chromedp.Void](`window.sameDocument = true`))))
	waitJS(t, b, "log shows ready", `document.getElementById("log").textContent.includes("ready\n")`)
	scripts, err := chromedp.Run(b, chromedp.Evaluate[int](`document.querySelectorAll("#log *").length`))
	must(t, err)
	title, err := chromedp.Run(b, chromedp.Title())
	must(t, err)
	logText, err := chromedp.Run(b, chromedp.Evaluate[string](`document.getElementById("log").textContent`))
	must(t, err)
	if scripts != 0 || title == "pwned" || !strings.Contains(logText, `<script>document.title="pwned"</script>`) {
		t.Fatalf("<script> log line not inert text: %d elements in the log, title %q, log %q", scripts, title, logText)
	}
	_, err = c.reg.CreateTicket(c.ctx, registry.Ticket{Op: registry.TicketSignal, Instance: id, Signal: "USR1"})
	must(t, err)
	waitJS(t, b, "line printed after the page opened", `window.sameDocument === true && document.getElementById("log").textContent.includes("got USR1")`)
	waitJS(t, b, "state history shows running", `document.querySelector('#states tr[data-transition="running"]') !== null`)
	shot(t, b, "instance")

	// The stderr switch: the page follows stderr and shows a line the
	// workload writes there after the switch.
	must(t, chromedp.Do(b, clickJS("stream-stderr"),
		chromedp.WaitVisible(chromedp.CSS(`#stream-stderr[aria-current]`)),
	))
	must(t, err2(chromedp.Run(b, chromedp.Evaluate[chromedp.Void](`window.sameDocument = true`))))
	waitJS(t, b, "stderr log open", `document.getElementById("log-status").textContent === "Following the log live."`)
	_, err = c.reg.CreateTicket(c.ctx, registry.Ticket{Op: registry.TicketSignal, Instance: id, Signal: "USR2"})
	must(t, err)
	waitJS(t, b, "stderr line printed after the switch", `window.sameDocument === true && document.getElementById("log").textContent.includes("got USR2 on stderr")`)
	if l := textOf(t, b, "#log"); strings.Contains(l, "ready") {
		t.Fatalf("the stderr log shows stdout lines: %q", l)
	}
	shot(t, b, "instance-stderr")
}

// chartShown checks that the page shows the chart named id as an inline
// SVG with a title and a description (wait: the first sample may come
// after the page opened; a live update brings it).
func chartShown(t *testing.T, b context.Context, id, title string) {
	t.Helper()
	fig := fmt.Sprintf(`figure[data-chart=%q]`, id)
	waitJS(t, b, "chart "+id, `document.querySelector('`+fig+` svg title') !== null && document.querySelector('`+fig+` svg desc') !== null`)
	if got := textOf(t, b, fig+" svg title"); got != title {
		t.Fatalf("chart %s title %q, want %q", id, got, title)
	}
	if d := textOf(t, b, fig+" svg desc"); !strings.Contains(d, "lowest") {
		t.Fatalf("chart %s description %q gives no numbers", id, d)
	}
}

func drainFromPage(t *testing.T, c *cluster, b context.Context, base string) {
	b, cancel := context.WithTimeout(b, testtime.Scaled(90*time.Second))
	defer cancel()
	must(t, chromedp.Do(b,
		chromedp.Navigate(base+"/ui/hosts/ui-b"),
		chromedp.WaitVisible(chromedp.CSS("#drain")),
		clickJS("drain"),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		clickJS("confirm"),
		chromedp.WaitVisible(chromedp.CSS("#undrain")),
	))
	if s := textOf(t, b, `[data-field="state"]`); s != "draining" {
		t.Fatalf("host page after drain shows state %q", s)
	}
	chartShown(t, b, "load-ui-b", "Load average (1 min) of ui-b")
	chartShown(t, b, "mem-ui-b", "Memory used on ui-b")
	d, err := c.reg.Drains(c.ctx)
	must(t, err)
	if _, ok := d["ui-b"]; !ok {
		t.Fatalf("registry drains after draining from the page: %v", d)
	}
	shot(t, b, "host")
}

// deployFromPage starts a deployment of demo to v2 with one canary (in
// the registry, as the CLI would), checks the app page shows it with its
// progress, and fails it from the page: confirmed, the deployment reverts
// (its canary was not promoted). Without a deployment driver in the
// agents it stays reverting; with one it ends reverted: either is seen.
func deployFromPage(t *testing.T, c *cluster, b context.Context, base string) {
	must(t, err2(c.reg.RegisterRevision(c.ctx, registry.Revision{App: "demo", Name: "v2", Dir: os.TempDir()})))
	d, err := c.reg.CreateDeployment(c.ctx, registry.DeployRequest{App: "demo", Rev: "v2", By: "ui-test",
		Override: &registry.Strategy{Canary: 1}})
	must(t, err)
	must(t, chromedp.Do(b,
		chromedp.Navigate(base+"/ui/apps/demo"),
		chromedp.WaitVisible(chromedp.CSS(`#deploy`)),
	))
	if id := textOf(t, b, `#deploy strong`); id != d.ID {
		t.Fatalf("app page shows deployment %q, registry %q", id, d.ID)
	}
	waitJS(t, b, "deployment progress shown", `document.querySelector('tr[data-deploy-proc="web"] progress') !== null`)
	shot(t, b, "app-deployment")
	must(t, chromedp.Do(b, clickJS("deploy-fail"), chromedp.WaitVisible(chromedp.CSS("#confirm"))))
	if q := textOf(t, b, "#question"); !strings.HasPrefix(q, "Fail deployment "+d.ID+" of demo?") {
		t.Fatalf("confirmation asks %q", q)
	}
	must(t, chromedp.Do(b, clickJS("confirm"), chromedp.WaitVisible(chromedp.CSS(`#deployments`))))
	waitJS(t, b, "deployment failed from the page", fmt.Sprintf(
		`(() => { const a = document.querySelector('#deploy[data-deploy-state="reverting"]'); return a !== null || document.querySelector('tr[data-past-deploy=%q]') !== null })()`, d.ID))
	cur, err := c.reg.Deployment(c.ctx, "demo")
	must(t, err)
	if cur.ID != d.ID || (cur.State != registry.DeployReverting && cur.State != registry.DeployReverted) {
		t.Fatalf("after failing from the page the registry has deployment %s %s (%s)", cur.ID, cur.State, cur.Reason)
	}
	shot(t, b, "app-deployment-failed")
}
