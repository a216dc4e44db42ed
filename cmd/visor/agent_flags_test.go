package main

import (
	"os"
	"path/filepath"
	"testing"
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
