package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/agent"
)

// TestAgentAllowRootInstances: a production agent refuses instances that
// would run as root unless -allow-root-instances (flag, environment or
// config file) allows them; -dev allows them unless told otherwise.
func TestAgentAllowRootInstances(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(cfgFile, []byte(`{"allow_root_instances": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		env    string // VISOR_ALLOW_ROOT_INSTANCES
		refuse bool
	}{
		{name: "production default", args: nil, refuse: true},
		{name: "dev default", args: []string{"-dev"}, refuse: false},
		{name: "dev refusing", args: []string{"-dev", "-allow-root-instances=false"}, refuse: true},
		{name: "flag", args: []string{"-allow-root-instances"}, refuse: false},
		{name: "environment", env: "true", refuse: false},
		{name: "environment false in dev", args: []string{"-dev"}, env: "false", refuse: true},
		{name: "config file", args: []string{"-config", cfgFile}, refuse: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("VISOR_ALLOW_ROOT_INSTANCES", tc.env)
			}
			o, err := parseAgentFlags(tc.args)
			if err != nil {
				t.Fatalf("parseAgentFlags(%q): %v", tc.args, err)
			}
			if o.cfg.RefuseRootInstances != tc.refuse {
				t.Fatalf("parseAgentFlags(%q) env %q: RefuseRootInstances = %v, want %v", tc.args, tc.env, o.cfg.RefuseRootInstances, tc.refuse)
			}
		})
	}
	if _, err := parseAgentFlags([]string{"-allow-root-instances=maybe"}); err == nil {
		t.Fatal("-allow-root-instances=maybe accepted")
	}
}

// TestAgentFlagPrecedence: every agent setting comes from, highest first,
// the command line, VISOR_<FLAG>, the config file, the flag's default; an
// empty environment variable counts as unset; --config beats VISOR_CONFIG.
func TestAgentFlagPrecedence(t *testing.T) {
	file := writeConfig(t, `{"host": "from-file", "ttl": "20s", "lost_grace": "40s", "max_parallel": 7,
		"labels": {"zone": "a", "disk": "ssd"}, "capacity": "unlimited"}`)
	other := writeConfig(t, `{"host": "other-file"}`)
	t.Setenv("VISOR_TTL", "30s")
	t.Setenv("VISOR_LOST_GRACE", "50s")
	t.Setenv("VISOR_MAX_PARALLEL", "") // empty: unset, the file's 7 applies
	t.Setenv("VISOR_CONFIG", other)
	o, err := parseAgentFlags([]string{"-config", file, "--ttl", "45s"})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	for _, tc := range []struct {
		what      string
		got, want any
	}{
		{"ttl: flag over env and file", c.TTL, 45 * time.Second},
		{"lost-grace: env over file", c.LostGrace, 50 * time.Second},
		{"max-parallel: file, empty env ignored", c.MaxParallel, 7},
		{"host: --config over VISOR_CONFIG", c.HostID, "from-file"},
		{"capacity: file", c.Capacity, -1},
		{"labels: file object", c.Labels["zone"] + "," + c.Labels["disk"], "a,ssd"},
		{"reconcile-interval: default", c.ReconcileInterval, 30 * time.Second},
		{"instance-memory: default", c.InstanceMemory, int64(128 << 20)},
		{"port-range: default", [2]int{c.PortMin, c.PortMax}, [2]int{20000, 29999}},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.what, tc.got, tc.want)
		}
	}
	o, err = parseAgentFlags(nil)
	if err != nil || o.cfg.HostID != "other-file" {
		t.Errorf("VISOR_CONFIG without --config: host %q, err %v; want other-file", o.cfg.HostID, err)
	}
}

// TestAgentFlagErrorsNameTheSource: a bad value names the flag, the
// environment variable or the config file's key it came from.
func TestAgentFlagErrorsNameTheSource(t *testing.T) {
	file := writeConfig(t, `{"start_burst": 0}`)
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"-capacity", "some"}, "", `"--capacity"`},
		{nil, "soon", "VISOR_TTL"},
		{[]string{"-config", file}, "", "start_burst"},
		{[]string{"-log-level", "loud"}, "", "log-level"},
		{[]string{"extra"}, "", `unexpected argument "extra"`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("VISOR_TTL", tc.env)
			}
			_, err := parseAgentFlags(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) || exitCode(err) != exitUsage {
				t.Errorf("parseAgentFlags(%q) env %q: err %v (exit %d), want a usage error naming %s", tc.args, tc.env, err, exitCode(err), tc.want)
			}
		})
	}
}

// TestAgentSingleDashArgs: the agent command lines that test/, test/bench,
// test/fault and installed service units use (Go flag's one-dash spelling,
// boolean flags without a value followed by other flags) parse as before.
func TestAgentSingleDashArgs(t *testing.T) {
	o, err := parseAgentFlags([]string{"--endpoints", "127.0.0.1:1", "-host", "bench-0", "-data-dir", "/d",
		"-run-dir", "/d/run", "-http-addr", "off", "-cgroups", "none", "-log-level", "warn", "-stop-on-exit",
		"-enable-pprof", "-allow-root-instances", "-capacity", "unlimited", "-start-rate", "100000",
		"-start-burst", "1000", "-port-range", "20000-22999", "-ttl=5s", "-lost-grace", "2s", "-prefix=/p/"})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.HostID != "bench-0" || c.DataDir != "/d" || c.RunDir != "/d/run" || !c.DisableHTTP || c.Cgroups != "none" ||
		o.logLevel != hclog.Warn || !c.StopOnExit || !c.EnablePprof || c.RefuseRootInstances || c.Capacity != -1 ||
		c.StartRate != 100000 || c.StartBurst != 1000 || c.PortMin != 20000 || c.PortMax != 22999 ||
		c.TTL != 5*time.Second || c.LostGrace != 2*time.Second || o.globals.prefix != "/p/" || o.globals.endpoints != "127.0.0.1:1" {
		t.Errorf("parsed %+v (globals %+v, log level %v)", c, o.globals, o.logLevel)
	}
}

// TestAgentFlagDefaultsAreTheAgents: with no flag, environment or file,
// every field `visor agent` sets holds agent.DefaultConfig's value (or
// stays zero, which the agent fills with that same value): the CLI has no
// defaults of its own. The HTTP API is the one deliberate difference: off
// unless --http-addr (or --dev) asks for it.
func TestAgentFlagDefaultsAreTheAgents(t *testing.T) {
	o, err := parseAgentFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := agent.DefaultConfig()
	dv, cv := reflect.ValueOf(d), reflect.ValueOf(o.cfg)
	checked := 0
	for i := range dv.NumField() {
		name := dv.Type().Field(i).Name
		if dv.Field(i).IsZero() || name == "HTTPAddr" {
			continue
		}
		if cv.Field(i).IsZero() {
			continue // no flag: the agent's own default applies
		}
		checked++
		if !reflect.DeepEqual(cv.Field(i).Interface(), dv.Field(i).Interface()) {
			t.Errorf("%s: the CLI's default is %v, the agent's %v", name, cv.Field(i).Interface(), dv.Field(i).Interface())
		}
	}
	if checked < 20 {
		t.Errorf("only %d defaults came from flags, want at least 20", checked)
	}
	if !o.cfg.DisableHTTP {
		t.Error("the HTTP API is on without --http-addr")
	}
	for _, tc := range []struct {
		text string
		n    int64
	}{{"2GiB", 2 << 30}, {"20GiB", 20 << 30}, {"1536KiB", 1536 << 10}, {"1000", 1000}, {"0", 0}} {
		if got := bytesText(tc.n); got != tc.text {
			t.Errorf("bytesText(%d) = %q, want %q", tc.n, got, tc.text)
		}
		if back, err := parseBytes(tc.text); err != nil || back != tc.n {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", tc.text, back, err, tc.n)
		}
	}
	if got := memoryText(128 << 20); got != "128M" {
		t.Errorf("memoryText(128 MiB) = %q, want 128M", got)
	}
}
