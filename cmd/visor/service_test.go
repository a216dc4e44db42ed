package main

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/visorhq/visor/internal/version"
	"github.com/visorhq/visor/systemd"
)

// svcResult is one in-process CLI invocation's outcome.
type svcResult struct {
	code           int
	stdout, stderr string
}

func svcRun(args ...string) svcResult {
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(""), &stdout, &stderr)
	return svcResult{code, stdout.String(), stderr.String()}
}

// files lists everything under root, relative and sorted.
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// writeConfig writes a valid agent config file and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodConfig = `{"endpoints": "127.0.0.1:2379", "host": "h1", "labels": {"zone": "a"}}`

// TestPackagedConfigsValid checks the config the packages install and the
// documented example against the agent's own parser.
func TestPackagedConfigsValid(t *testing.T) {
	for _, f := range []string{"agent.json", "agent.example.json"} {
		t.Run(f, func(t *testing.T) {
			p := filepath.Join("..", "..", "packaging", f)
			if err := validateAgentArgs([]string{"-config", p}); err != nil {
				t.Fatalf("packaging/%s is rejected by the agent: %v", f, err)
			}
		})
	}
}

func TestServiceRender(t *testing.T) {
	cfg := writeConfig(t, goodConfig)
	rel, err := filepath.Rel(mustGetwd(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := systemd.Options{
		Binary:     "/usr/bin/visor",
		ConfigPath: cfg,
		Args:       []string{"-endpoints=10.0.0.1:2379", "-host=web 1"},
	}
	cases := []struct {
		name string
		args []string
		init string
	}{
		{"systemd", []string{"-init", "systemd", "-binary", "/usr/bin/visor", "--", "-config", rel, "-host", "web 1", "--endpoints", "10.0.0.1:2379"}, systemd.InitSystemd},
		{"no separator", []string{"-init=systemd", "-binary=/usr/bin/visor", "-host=web 1", "-config", cfg, "-endpoints", "10.0.0.1:2379"}, systemd.InitSystemd},
		{"launchd", []string{"-init", "launchd", "-binary", "/usr/bin/visor", "--", "-config", cfg, "-endpoints=10.0.0.1:2379", "-host", "web 1"}, systemd.InitLaunchd},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := svcRun(append([]string{"service", "render"}, tc.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			exp, err := systemd.Render(tc.init, want)
			if err != nil {
				t.Fatal(err)
			}
			if r.stdout != string(exp) {
				t.Errorf("rendered:\n%s\nwant:\n%s", r.stdout, exp)
			}
		})
	}
	t.Run("unknown init", func(t *testing.T) {
		if r := svcRun("service", "render", "-init", "upstart", "-binary", "/usr/bin/visor"); r.code != 2 {
			t.Errorf("exit %d, want 2 (%s)", r.code, r.stderr)
		}
	})
	t.Run("unknown agent flag", func(t *testing.T) {
		args := []string{"service", "render", "-binary", "/usr/bin/visor", "--", "-bogus"}
		r := svcRun(args...)
		checkFailure(t, result(r), 2, []string{"service render: agent flags:", "-bogus"}, args)
	})
	t.Run("empty endpoints", func(t *testing.T) {
		args := []string{"service", "render", "-binary", "/usr/bin/visor", "--", "-endpoints="}
		checkFailure(t, result(svcRun(args...)), 2, []string{"agent flags: --endpoints is empty"}, args)
	})
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// TestServiceInstallBadInput: bad input is a clear error and nothing is
// written.
func TestServiceInstallBadInput(t *testing.T) {
	badJSON := writeConfig(t, `{"endpoints": `)
	unknownKey := writeConfig(t, `{"no_such_flag": 1}`)
	cases := []struct {
		name     string
		args     []string
		code     int
		mentions string
	}{
		{"missing config", []string{"--", "-config", "/nonexistent/agent.json"}, 2, "/nonexistent/agent.json"},
		{"config not json", []string{"--", "-config", badJSON}, 2, "not valid JSON"},
		{"config unknown key", []string{"--", "-config", unknownKey}, 2, "no_such_flag"},
		{"unknown agent flag", []string{"--", "-bogus"}, 2, "bogus"},
		{"empty endpoints", []string{"--", "-endpoints", ""}, 2, "--endpoints is empty"},
		{"bad agent value", []string{"--", "-ttl", "soon"}, 2, "ttl"},
		{"relative binary", []string{"-binary", "bin/visor"}, 2, "bin/visor"},
		{"bad user", []string{"-user", "Root Admin"}, 1, "user name"},
		{"unknown init", []string{"-init", "upstart"}, 2, "upstart"},
		{"stray argument", []string{"--", "-host", "h1", "extra"}, 2, "extra"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			args := append([]string{"service", "install", "-root", root, "-init", "systemd", "-binary", "/usr/bin/visor"}, tc.args...)
			r := svcRun(args...)
			checkFailure(t, result(r), tc.code, []string{"service install: ", tc.mentions}, args)
			if got := files(t, root); len(got) != 0 {
				t.Errorf("bad input wrote %q", got)
			}
		})
	}
}

// TestServiceInstallRoot installs under -root (not talking to any init),
// twice, then uninstalls twice.
func TestServiceInstallRoot(t *testing.T) {
	root := t.TempDir()
	cfg := writeConfig(t, goodConfig)
	base := []string{"-root", root, "-init", "systemd"}
	install := append(append([]string{"service", "install"}, base...), "-binary", "/usr/bin/visor", "--", "-config", cfg, "-host", "h1")

	r := svcRun(install...)
	if r.code != 0 {
		t.Fatalf("install: exit %d: %s", r.code, r.stderr)
	}
	unit := filepath.Join(root, "etc/systemd/system/visor-agent.service")
	if !strings.Contains(r.stdout, "wrote "+unit) || !strings.Contains(r.stdout, "daemon-reload and enable skipped") {
		t.Errorf("install output %q", r.stdout)
	}
	wantFiles := []string{"etc", "etc/systemd", "etc/systemd/system", "etc/systemd/system/visor-agent.service"}
	if got := files(t, root); !slices.Equal(got, wantFiles) {
		t.Errorf("files %q, want %q", got, wantFiles)
	}
	got, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := systemd.Render(systemd.InitSystemd, systemd.Options{Binary: "/usr/bin/visor", ConfigPath: cfg, Args: []string{"-host=h1"}})
	if !bytes.Equal(got, want) {
		t.Errorf("installed unit:\n%s\nwant:\n%s", got, want)
	}

	r = svcRun(install...)
	if r.code != 0 || !strings.Contains(r.stdout, "already installed and up to date") {
		t.Errorf("second install: exit %d, out %q, err %q", r.code, r.stdout, r.stderr)
	}

	r = svcRun(append(append([]string{"service", "status"}, base...), "-o", "json")...)
	var st systemd.Status
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil || !st.Installed || st.State != "init-not-running" {
		t.Errorf("status: exit %d, %q, %s", r.code, r.stdout, r.stderr)
	}
	if r := svcRun(append([]string{"service", "start"}, base...)...); r.code != 1 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("start without a running systemd: exit %d, %q", r.code, r.stderr)
	}

	r = svcRun(append([]string{"service", "uninstall"}, base...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "removed "+unit) {
		t.Errorf("uninstall: exit %d, out %q, err %q", r.code, r.stdout, r.stderr)
	}
	if got := files(t, root); !slices.Equal(got, wantFiles[:3]) {
		t.Errorf("files after uninstall %q", got)
	}
	r = svcRun(append([]string{"service", "uninstall"}, base...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "not installed") {
		t.Errorf("uninstall of nothing: exit %d, out %q, err %q", r.code, r.stdout, r.stderr)
	}
}

func TestVersion(t *testing.T) {
	r := svcRun("version")
	if r.code != 0 || strings.TrimSpace(r.stdout) != version.String() {
		t.Errorf("version: exit %d, %q; want %q", r.code, r.stdout, version.String())
	}
	r = svcRun("version", "-o", "json")
	var v versionInfo
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.Version != version.Version || v.Commit != version.Commit || v.Date != version.Date || v.Go == "" {
		t.Errorf("version -o json: exit %d, %q", r.code, r.stdout)
	}
	if r := svcRun("version", "extra"); r.code != 2 {
		t.Errorf("version extra: exit %d, want 2", r.code)
	}
}

// TestServiceInstallSecretWarning: a secret given as a flag lands in a
// world-readable unit, so install warns and points at the config file.
func TestServiceInstallSecretWarning(t *testing.T) {
	root := t.TempDir()
	r := svcRun("service", "install", "-root", root, "-init", "systemd", "-binary", "/usr/bin/visor", "--", "-token", "s3cret", "-host", "h1")
	if r.code != 0 {
		t.Fatalf("install: exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "warning: -token is written into the service definition") {
		t.Errorf("no warning about -token: %q", r.stderr)
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/visor-agent.service"))
	if err != nil || !strings.Contains(string(unit), "ExecStart=/usr/bin/visor agent -host=h1 -token=s3cret\n") {
		t.Errorf("unit ExecStart wrong (%v):\n%s", err, unit)
	}
}

// TestServiceInstallMissingValue: install's own flag without its value.
func TestServiceInstallMissingValue(t *testing.T) {
	root := t.TempDir()
	r := svcRun("service", "install", "-root", root, "-init")
	if r.code != 2 || !strings.Contains(r.stderr, "-init") {
		t.Errorf("exit %d, %q; want 2 naming -init", r.code, r.stderr)
	}
	if got := files(t, root); len(got) != 0 {
		t.Errorf("wrote %q", got)
	}
}
