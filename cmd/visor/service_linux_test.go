package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/visorhq/visor/systemd"
)

// nsEnv marks the test binary re-executed in a private mount namespace.
const nsEnv = "VISOR_CMD_TEST_IN_MOUNT_NS"

// TestServiceInstallMountNamespace runs `visor service install` and
// `uninstall` on the real paths, inside a private mount namespace with an
// empty tmpfs over each target directory: our unit with -init systemd, and
// what kardianos/service picks on this host without it.
func TestServiceInstallMountNamespace(t *testing.T) {
	dirs := []string{"/etc/systemd/system", "/etc/init.d", "/etc/rc0.d", "/etc/rc1.d", "/etc/rc2.d", "/etc/rc3.d", "/etc/rc4.d", "/etc/rc5.d", "/etc/rc6.d"}
	if os.Getenv(nsEnv) != "1" {
		if os.Geteuid() != 0 {
			t.Skip("mount namespaces need root; run the suite as root to cover install on the real paths")
		}
		unshare, err := exec.LookPath("unshare")
		if err != nil {
			t.Skip("unshare(1) not installed; cannot build a private mount namespace")
		}
		cmd := exec.Command(unshare, "--mount", "--propagation", "private", "--",
			os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), nsEnv+"=1")
		// The test in the namespace dies with this one, even when this one is
		// killed or times out (unshare execs it, keeping the signal).
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		t.Logf("in mount namespace:\n%s", out)
		if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
			t.Fatalf("test in mount namespace: %v", err)
		}
		for _, d := range dirs {
			if m, _ := filepath.Glob(filepath.Join(d, "*visor-agent*")); len(m) > 0 {
				t.Fatalf("the host's real %s changed: %q", d, m)
			}
		}
		return
	}
	for _, d := range dirs {
		if err := syscall.Mount("tmpfs", d, "tmpfs", 0, "mode=0755,size=1m"); err != nil {
			t.Fatalf("mount tmpfs on %s: %v", d, err)
		}
	}
	cfg := writeConfig(t, goodConfig)
	install := []string{"service", "install", "-binary", "/usr/bin/visor", "--", "-config", cfg}

	t.Run("bad input", func(t *testing.T) {
		if r := svcRun("service", "install", "-init", "systemd", "--", "-config", "/nonexistent.json"); r.code != 2 {
			t.Errorf("exit %d, want 2: %s", r.code, r.stderr)
		}
		for _, d := range dirs {
			if got := files(t, d); len(got) != 0 {
				t.Errorf("%s: bad input wrote %q", d, got)
			}
		}
	})

	t.Run("systemd", func(t *testing.T) {
		for i := 0; i < 2; i++ {
			if r := svcRun(append([]string{"service", "install", "-init", "systemd"}, install[2:]...)...); r.code != 0 {
				t.Fatalf("install: exit %d: %s", r.code, r.stderr)
			}
			if got := files(t, "/etc/systemd/system"); !slices.Equal(got, []string{"visor-agent.service"}) {
				t.Fatalf("files %q", got)
			}
		}
		if r := svcRun("service", "uninstall", "-init", "systemd"); r.code != 0 {
			t.Fatalf("uninstall: exit %d: %s", r.code, r.stderr)
		}
		if got := files(t, "/etc/systemd/system"); len(got) != 0 {
			t.Fatalf("files after uninstall %q", got)
		}
		if r := svcRun("service", "uninstall", "-init", "systemd"); r.code != 0 || !strings.Contains(r.stdout, "not installed") {
			t.Fatalf("uninstall of nothing: exit %d, %q", r.code, r.stdout)
		}
	})

	t.Run("detected", func(t *testing.T) {
		r := svcRun(install...)
		if r.code != 0 {
			t.Fatalf("install: exit %d: %s", r.code, r.stderr)
		}
		if !strings.Contains(r.stdout, "neither systemd nor launchd") {
			t.Fatalf("install on a host whose PID 1 is not systemd did not say it fell back: %q", r.stdout)
		}
		if got := files(t, "/etc/init.d"); !slices.Equal(got, []string{"visor-agent"}) {
			t.Errorf("/etc/init.d: %q", got)
		}
		var st systemd.Status
		if r := svcRun("service", "status", "-o", "json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil || !st.Installed || st.Init != "unix-systemv" {
			t.Errorf("status after install: exit %d, %q, %q", r.code, r.stdout, r.stderr)
		}
		if r := svcRun("service", "uninstall"); r.code != 0 {
			t.Fatalf("uninstall: exit %d: %s", r.code, r.stderr)
		}
		for _, d := range dirs {
			if got := files(t, d); len(got) != 0 {
				t.Errorf("%s after uninstall: %q", d, got)
			}
		}
		if r := svcRun("service", "uninstall"); r.code != 0 || !strings.Contains(r.stdout, "not installed") {
			t.Errorf("uninstall of nothing: exit %d, %q %q", r.code, r.stdout, r.stderr)
		}
	})
}
