package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ with the CLI's current output")

// TestGolden compares the CLI's help and completion output with the
// golden files in testdata/; go test -run TestGolden -update rewrites
// them after an intended change (review the diff).
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		args []string
	}{
		{"help.golden", []string{"--help"}},
		{"help_scale.golden", []string{"help", "scale"}},
		{"help_agent.golden", []string{"agent", "--help"}},
		{"completion_bash.golden", []string{"completion", "bash"}},
		{"completion_zsh.golden", []string{"completion", "zsh"}},
		{"completion_fish.golden", []string{"completion", "fish"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			res := runCLI(tc.args...)
			if res.code != 0 || res.stderr != "" {
				t.Fatalf("visor %s: exit %d, stderr %q", strings.Join(tc.args, " "), res.code, res.stderr)
			}
			path := filepath.Join("testdata", tc.file)
			if *update {
				if err := os.WriteFile(path, []byte(res.stdout), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test -run TestGolden -update writes it)", err)
			}
			if res.stdout != string(want) {
				t.Errorf("visor %s differs from %s (go test -run TestGolden -update rewrites it):\n%s",
					strings.Join(tc.args, " "), path, lineDiff(string(want), res.stdout))
			}
		})
	}
}

// lineDiff names the first line where got differs from want.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, wl, gl)
		}
	}
	return "(no line differs)"
}

// TestCompletion: the shell scripts call "visor __complete ..."; it names
// commands, subcommands (aliases too) and flags, and the help command
// completes command names.
func TestCompletion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "sc"}, []string{"scale"}},
		{[]string{"__complete", "app", ""}, []string{"create", "delete", "list", "show"}},
		{[]string{"__complete", "scale", "web", "v1", "web=1", "--wa"}, []string{"--wait", "--wait-timeout"}},
		{[]string{"__complete", "help", "ho"}, []string{"host", "hosts"}},
		{[]string{"__complete", "--o"}, []string{"--output"}},
	} {
		res := runCLI(tc.args...)
		if res.code != 0 {
			t.Fatalf("visor %s: exit %d: %s", strings.Join(tc.args, " "), res.code, res.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(res.stdout, w+"\t") && !strings.Contains(res.stdout, w+"\n") {
				t.Errorf("visor %s: no %q in:\n%s", strings.Join(tc.args, " "), w, res.stdout)
			}
		}
	}
}

// TestHelpForms: every way of asking for help prints the same text on
// stdout and exits 0; bare "visor" and a bare group are usage errors.
func TestHelpForms(t *testing.T) {
	want := runCLI("--help")
	for _, args := range [][]string{{"-h"}, {"-help"}, {"help"}, {"--endpoints", "x", "help"}} {
		if res := runCLI(args...); res.code != 0 || res.stderr != "" || res.stdout != want.stdout {
			t.Errorf("visor %s: exit %d, stderr %q, stdout differs from visor --help: %v", strings.Join(args, " "), res.code, res.stderr, res.stdout != want.stdout)
		}
	}
	scale := runCLI("help", "scale")
	for _, args := range [][]string{{"scale", "-h"}, {"scale", "--help"}, {"scale", "web", "v1", "web=1", "--help"}} {
		if res := runCLI(args...); res.code != 0 || res.stdout != scale.stdout {
			t.Errorf("visor %s: exit %d, stdout differs from visor help scale", strings.Join(args, " "), res.code)
		}
	}
	for _, args := range [][]string{{}, {"app"}} {
		res := runCLI(args...)
		if res.code != exitUsage || res.stdout != "" || !strings.HasSuffix(res.stderr, "missing command (see 'visor"+strings.TrimSuffix(" "+strings.Join(args, " "), " ")+" --help')\n") {
			t.Errorf("visor %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), res.code, res.stdout, res.stderr)
		}
	}
}
