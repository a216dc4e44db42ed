package systemd

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kardianos/service"
)

// nsEnv marks the re-executed test binary that runs inside a private mount
// namespace.
const nsEnv = "VISOR_SYSTEMD_TEST_IN_MOUNT_NS"

// nsDirs are the host directories install writes to; inside the namespace
// each gets an empty tmpfs, so the machine's real /etc is never touched.
var nsDirs = []string{
	"/etc/systemd/system",
	"/etc/init.d",
	"/etc/rc0.d", "/etc/rc1.d", "/etc/rc2.d", "/etc/rc3.d", "/etc/rc4.d", "/etc/rc5.d", "/etc/rc6.d",
}

// inMountNamespace re-executes the current test in a private mount
// namespace (unshare --mount, propagation private) with an empty tmpfs over
// each of nsDirs, and returns false; in the re-executed binary it mounts
// the tmpfs and returns true, and the caller runs the real test body.
func inMountNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv(nsEnv) == "1" {
		for _, d := range nsDirs {
			if _, err := os.Stat(d); err != nil {
				t.Fatalf("target dir missing on this host: %v", err)
			}
			if err := syscall.Mount("tmpfs", d, "tmpfs", 0, "mode=0755,size=1m"); err != nil {
				t.Fatalf("mount tmpfs on %s: %v", d, err)
			}
		}
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("mount namespaces need root; run the suite as root to cover install/uninstall on the real paths")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare(1) not installed; cannot build a private mount namespace")
	}
	before := hostState(t)
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "--",
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), nsEnv+"=1")
	// The test in the namespace dies with this one, even when this one is
	// killed or times out (unshare execs it, keeping the signal).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	t.Logf("in mount namespace:\n%s", out)
	if err != nil {
		t.Fatalf("test in mount namespace: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("test did not run in the mount namespace")
	}
	if after := hostState(t); after != before {
		t.Fatalf("host directories changed: before %q, after %q", before, after)
	}
	return false
}

// hostState lists the real directories' entries named after the service.
func hostState(t *testing.T) string {
	var found []string
	for _, d := range nsDirs {
		m, err := filepath.Glob(filepath.Join(d, "*"+ServiceName+"*"))
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, m...)
	}
	return strings.Join(found, " ")
}

// TestInstallMountNamespace installs and uninstalls on the real paths
// (Root "/") inside a private mount namespace: our unit for systemd, and
// kardianos/service's own SysV script for the init system detected on a
// host whose PID 1 is not systemd.
func TestInstallMountNamespace(t *testing.T) {
	if !inMountNamespace(t) {
		return
	}
	ctx := context.Background()

	t.Run("systemd", func(t *testing.T) {
		rec := &recorder{state: "inactive"}
		m, err := New(Config{Init: InitSystemd, Options: testOptions(), Run: rec.run, InitRunning: func() bool { return true }, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ { // twice: install is idempotent
			if _, err := m.Install(ctx); err != nil {
				t.Fatalf("Install #%d: %v", i+1, err)
			}
			eq(t, "files", tree(t, "/etc/systemd/system"), []string{"visor-agent.service"})
		}
		fi, err := os.Stat("/etc/systemd/system/visor-agent.service")
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("unit mode = %v, %v; want 0644", fi.Mode(), err)
		}
		eq(t, "install calls", rec.take(), []string{
			"systemctl daemon-reload", "systemctl enable visor-agent.service",
			"systemctl daemon-reload", "systemctl enable visor-agent.service",
		})
		if _, err := m.Uninstall(ctx); err != nil {
			t.Fatalf("Uninstall: %v", err)
		}
		eq(t, "files after uninstall", tree(t, "/etc/systemd/system"), []string(nil))
		if _, err := m.Uninstall(ctx); !errors.Is(err, ErrNotInstalled) {
			t.Fatalf("second Uninstall = %v, want ErrNotInstalled", err)
		}
	})

	t.Run("detected", func(t *testing.T) {
		m, err := New(Config{Options: testOptions(), Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kardianos/service detected %s (chosen system %v)", m.Init(), service.ChosenSystem())
		if m.Init() != "unix-systemv" {
			t.Fatalf("detected %q; this test expects a host whose PID 1 is not systemd, where kardianos falls back to unix-systemv", m.Init())
		}
		if !m.Fallback() || m.Path() != "" {
			t.Errorf("Fallback = %v, Path = %q; want true, empty", m.Fallback(), m.Path())
		}
		for i := 0; i < 2; i++ {
			res, err := m.Install(ctx)
			if err != nil {
				t.Fatalf("Install #%d: %v", i+1, err)
			}
			if !res.Fallback {
				t.Errorf("Install result %+v, want Fallback", res)
			}
			eq(t, "init.d", tree(t, "/etc/init.d"), []string{"visor-agent"})
			for _, l := range sysvLinks() {
				if dst, err := os.Readlink(l); err != nil || dst != sysvScript {
					t.Errorf("link %s -> %q, %v; want %s", l, dst, err, sysvScript)
				}
			}
		}
		script, err := os.ReadFile(sysvScript)
		if err != nil || !strings.Contains(string(script), "/usr/bin/visor") || !strings.Contains(string(script), `"agent" "-config" "/etc/visor/agent.json" "-host" "h1"`) {
			t.Errorf("init script lacks the agent command line: %v\n%s", err, script)
		}
		if _, err := m.Uninstall(ctx); err != nil {
			t.Fatalf("Uninstall: %v", err)
		}
		for _, d := range nsDirs {
			eq(t, "files under "+d, tree(t, d), []string(nil))
		}
		if _, err := m.Uninstall(ctx); !errors.Is(err, ErrNotInstalled) {
			t.Fatalf("second Uninstall = %v, want ErrNotInstalled", err)
		}
	})
}
