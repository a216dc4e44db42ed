package test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// TestScaleWaitFailsAsSoonAsKnown (issue 17, item 1): `visor scale --wait`
// returned success for a command that exits at once with code 3 (it was
// running for an instant) and waited its whole timeout for starts that
// cannot succeed. Against a real agent: a crash-looping command fails the
// wait naming exit code 3, and an artifact answering 404 fails it naming
// the 404; both with exit code 1, not the timeout's 3, though the timeout
// is far off.
func TestScaleWaitFailsAsSoonAsKnown(t *testing.T) {
	c := newCluster(t)
	c.startAgent("host-a")
	visor := func(args ...string) (string, int) {
		cmd := exec.CommandContext(c.ctx, c.bin, append([]string{"--endpoints", strings.Join(c.etcd.Endpoints(), ","), "--prefix", c.prefix}, args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("visor %v: %v", args, err)
		}
		return string(out), code
	}
	ctx := c.ctx
	timeout := testtime.Scaled(5 * time.Minute).String()

	t.Run("crash loop names the exit code", func(t *testing.T) {
		must(t, err2(c.reg.RegisterApp(ctx, registry.App{Name: "crashy"})))
		must(t, err2(c.reg.RegisterRevision(ctx, registry.Revision{App: "crashy", Name: "v1", Dir: os.TempDir()})))
		must(t, err2(c.reg.SetProcType(ctx, registry.ProcType{App: "crashy", Name: "web", Command: "exit 3"})))
		out, code := visor("scale", "crashy", "v1", "web=1", "--wait", "--wait-timeout", timeout)
		if code != 1 || !strings.Contains(out, "crash-looping") || !strings.Contains(out, "exit code 3") {
			t.Fatalf("scale --wait of an exit-3 command: exit %d, want 1 naming the crash loop and exit code 3:\n%s", code, out)
		}
		// The backoff's reason says when the restart comes (ps's REASON).
		if !strings.Contains(out, "restarting in ") {
			t.Fatalf("crash loop without \"restarting in\" in its reason:\n%s", out)
		}
	})

	t.Run("failing health check past its deadline", func(t *testing.T) {
		// The workload never listens, so its tcp check is refused: it
		// stays starting. Deadline: (1 s + 1 s) × 2 + 10 s = 14 s.
		must(t, err2(c.reg.RegisterApp(ctx, registry.App{Name: "sick"})))
		must(t, c.reg.SetEnv(ctx, "sick", map[string]string{"VISOR_E2E": c.runID}))
		must(t, err2(c.reg.RegisterRevision(ctx, registry.Revision{App: "sick", Name: "v1", Dir: os.TempDir()})))
		must(t, err2(c.reg.SetProcType(ctx, registry.ProcType{App: "sick", Name: "web", Command: "exec sleep 3600",
			StopTimeout: registry.Duration(3 * time.Second),
			Health: &registry.HealthCheck{Type: registry.CheckTCP, Period: registry.Duration(time.Second),
				Timeout: registry.Duration(time.Second), FailureThreshold: 2}})))
		out, code := visor("scale", "sick", "v1", "web=1", "--wait", "--wait-timeout", timeout)
		if code != 1 || !strings.Contains(out, "past its health check's deadline of 14s") || !strings.Contains(out, "tcp check: ") ||
			!strings.Contains(out, "instance sick-web-") {
			t.Fatalf("scale --wait of an instance whose health check fails: exit %d, want 1 naming the instance, deadline and check:\n%s", code, out)
		}
		// ps shows the failing check in its REASON column.
		ps, code := visor("ps", "sick", "--no-usage")
		if code != 0 || !strings.Contains(ps, "starting") || !strings.Contains(ps, "unhealthy: tcp check: ") {
			t.Fatalf("ps of the unhealthy instance: exit %d\n%s", code, ps)
		}
		if out, code := visor("scale", "sick", "v1", "web=0", "--wait", "--wait-timeout", timeout); code != 0 {
			t.Fatalf("scale to 0: exit %d\n%s", code, out)
		}
	})

	t.Run("artifact 404 names it", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		defer srv.Close()
		must(t, err2(c.reg.RegisterApp(ctx, registry.App{Name: "missing"})))
		must(t, err2(c.reg.RegisterRevision(ctx, registry.Revision{App: "missing", Name: "v1",
			ArtifactURL: srv.URL + "/missing.tar.gz", SHA256: strings.Repeat("ab", 32)})))
		must(t, err2(c.reg.SetProcType(ctx, registry.ProcType{App: "missing", Name: "web", Command: "exec sleep 3600"})))
		out, code := visor("scale", "missing", "v1", "web=1", "--wait", "--wait-timeout", testtime.Scaled(30*time.Second).String())
		if code != 1 || !strings.Contains(out, "404") || !strings.Contains(out, "failed on every live host") {
			t.Fatalf("scale --wait of a 404 artifact: exit %d, want 1 naming the 404:\n%s", code, out)
		}
	})
}
