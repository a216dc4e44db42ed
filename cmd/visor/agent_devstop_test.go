package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentDevStopsOnExit: the dev agent stops its instances when it exits
// (its registry may be a temporary directory that goes with it: issue 17,
// item 2); a production agent leaves them running unless told; the dev
// agent keeps them only with a data dir of its own, where the next start
// re-adopts them.
func TestAgentDevStopsOnExit(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(cfgFile, []byte(`{"stop_on_exit": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		stop bool
	}{
		{"production default", nil, false},
		{"production flag", []string{"-stop-on-exit"}, true},
		{"production config file", []string{"-config", cfgFile}, true},
		{"dev default", []string{"-dev"}, true},
		{"dev with a data dir, keeping instances", []string{"-dev", "-data-dir", dir, "-stop-on-exit=false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseAgentFlags(tc.args)
			if err != nil {
				t.Fatalf("parseAgentFlags(%q): %v", tc.args, err)
			}
			if o.cfg.StopOnExit != tc.stop {
				t.Fatalf("parseAgentFlags(%q): StopOnExit = %v, want %v", tc.args, o.cfg.StopOnExit, tc.stop)
			}
		})
	}
	_, err := parseAgentFlags([]string{"-dev", "-stop-on-exit=false"})
	if err == nil || !strings.Contains(err.Error(), "needs --data-dir") {
		t.Fatalf("-dev -stop-on-exit=false on a temporary data dir: %v; want a refusal naming --data-dir", err)
	}
}
