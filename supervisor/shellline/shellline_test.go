package shellline

import (
	"errors"
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, line string
		want       Line
	}{
		// Direct: literal words, no shell.
		{"plain", "sleep 10", Line{Kind: Direct, Argv: []string{"sleep", "10"}, Program: "sleep"}},
		{"exec dropped", "exec python3 -m http.server 8000", Line{Kind: Direct, Argv: []string{"python3", "-m", "http.server", "8000"}, Program: "python3"}},
		{"relative path", "./run web --port 1", Line{Kind: Direct, Argv: []string{"./run", "web", "--port", "1"}, Program: "./run"}},
		{"quotes removed", `printenv 'A B' "C D" E\ F ""`, Line{Kind: Direct, Argv: []string{"printenv", "A B", "C D", "E F", ""}, Program: "printenv"}},
		{"quoted program", `"./my prog" x`, Line{Kind: Direct, Argv: []string{"./my prog", "x"}, Program: "./my prog"}},
		{"double-quote escapes", `cmd "a\$b\"c\d"`, Line{Kind: Direct, Argv: []string{"cmd", `a$b"c\d`}, Program: "cmd"}},
		{"comment", "sleep 1 # wait a bit", Line{Kind: Direct, Argv: []string{"sleep", "1"}, Program: "sleep"}},
		{"surrounding space", "  sleep   1  ", Line{Kind: Direct, Argv: []string{"sleep", "1"}, Program: "sleep"}},
		{"non-existent program", "no-such-command --flag", Line{Kind: Direct, Argv: []string{"no-such-command", "--flag"}, Program: "no-such-command"}},

		// Exec: one program, the shell expands and replaces itself.
		{"env expansion", "exec python3 -m http.server $PORT", Line{Kind: Exec, Program: "python3", Shell: Sh, Script: "exec python3 -m http.server $PORT"}},
		{"exec inserted", "sleep $PORT", Line{Kind: Exec, Program: "sleep", Shell: Sh, Script: "exec sleep $PORT"}},
		{"braced param", `./run --port="${PORT:-80}"`, Line{Kind: Exec, Program: "./run", Shell: Sh, Script: `exec ./run --port="${PORT:-80}"`}},
		{"assignment", "FOO=1 ./run web", Line{Kind: Exec, Program: "./run", Shell: Sh, Script: "FOO=1 exec ./run web"}},
		{"assignment before exec", "FOO=1 exec ./run web", Line{Kind: Exec, Program: "./run", Shell: Sh, Script: "FOO=1 exec ./run web"}},
		{"PATH assignment", "PATH=/opt/bin:$PATH tool", Line{Kind: Exec, Shell: Sh, Script: "PATH=/opt/bin:$PATH exec tool"}},
		{"redirection", "./run >>out.log 2>&1", Line{Kind: Exec, Program: "./run", Shell: Sh, Script: "exec ./run >>out.log 2>&1"}},
		{"heredoc", "cat <<EOF\nhello\nEOF", Line{Kind: Exec, Program: "cat", Shell: Sh, Script: "exec cat <<EOF\nhello\nEOF"}},
		{"glob", "ls *.txt", Line{Kind: Exec, Program: "ls", Shell: Sh, Script: "exec ls *.txt"}},
		{"tilde", "ls ~", Line{Kind: Exec, Program: "ls", Shell: Sh, Script: "exec ls ~"}},
		{"command substitution", "sleep $(echo 5)", Line{Kind: Exec, Program: "sleep", Shell: Sh, Script: "exec sleep $(echo 5)"}},

		// Script: the shell runs the line as written.
		{"until", "until false; do sleep 1; done", Line{Kind: Script, Shell: Sh, Script: "until false; do sleep 1; done"}},
		{"colon", ": starting; exec sleep 10", Line{Kind: Script, Shell: Sh, Script: ": starting; exec sleep 10"}},
		{"colon alone", ":", Line{Kind: Script, Shell: Sh, Script: ":"}},
		{"case", "case x in x) exec sleep 10;; esac", Line{Kind: Script, Shell: Sh, Script: "case x in x) exec sleep 10;; esac"}},
		{"negation", "! false", Line{Kind: Script, Shell: Sh, Script: "! false"}},
		{"exit", "exit 1", Line{Kind: Script, Shell: Sh, Script: "exit 1"}},
		{"dot", ". ./env.sh && exec ./run", Line{Kind: Script, Shell: Sh, Script: ". ./env.sh && exec ./run"}},
		{"source uses bash", "source ./env.sh && exec ./run", Line{Kind: Script, Shell: Bash, Script: "source ./env.sh && exec ./run"}},
		{"cd", "cd sub && exec ./x", Line{Kind: Script, Shell: Sh, Script: "cd sub && exec ./x"}},
		{"export", "export A=1; exec ./run", Line{Kind: Script, Shell: Sh, Script: "export A=1; exec ./run"}},
		{"pipe", "./gen | ./consume", Line{Kind: Script, Shell: Sh, Script: "./gen | ./consume"}},
		{"and", "./migrate && exec ./serve", Line{Kind: Script, Shell: Sh, Script: "./migrate && exec ./serve"}},
		{"background", "./run &", Line{Kind: Script, Shell: Sh, Script: "./run &"}},
		{"subshell", "(exec ./run)", Line{Kind: Script, Shell: Sh, Script: "(exec ./run)"}},
		{"if", "if true; then exec ./run; fi", Line{Kind: Script, Shell: Sh, Script: "if true; then exec ./run; fi"}},
		{"builtin echo", "echo hi", Line{Kind: Script, Shell: Sh, Script: "echo hi"}},
		{"exec with options", "exec -a name ./run", Line{Kind: Script, Shell: Sh, Script: "exec -a name ./run"}},
		{"exec redirection only", "exec >log", Line{Kind: Script, Shell: Sh, Script: "exec >log"}},
		{"variable program", "$CMD --flag", Line{Kind: Script, Shell: Sh, Script: "$CMD --flag"}},
		{"bash array", "a=(1 2); exec sleep ${a[1]}", Line{Kind: Script, Shell: Bash, Script: "a=(1 2); exec sleep ${a[1]}"}},
		{"bash test", "[[ -d /tmp ]] && exec sleep 1", Line{Kind: Script, Shell: Bash, Script: "[[ -d /tmp ]] && exec sleep 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.line)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.line, err)
			}
			if got.Kind != tc.want.Kind || !slices.Equal(got.Argv, tc.want.Argv) || got.Program != tc.want.Program ||
				got.Shell != tc.want.Shell || got.Script != tc.want.Script {
				t.Errorf("Parse(%q) =\n %+v, want\n %+v", tc.line, got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line string
		want error
	}{
		{"", ErrEmpty},
		{"   \t", ErrEmpty},
		{"# only a comment", ErrEmpty},
		{"echo 'unterminated", ErrSyntax},
		{"if true; then", ErrSyntax},
		{"./run )", ErrSyntax},
	} {
		if _, err := Parse(tc.line); !errors.Is(err, tc.want) {
			t.Errorf("Parse(%q) error = %v, want %v", tc.line, err, tc.want)
		}
	}
}

func TestArgs(t *testing.T) {
	t.Parallel()
	d, _ := Parse("sleep 1")
	if got := d.Args(); !slices.Equal(got, []string{"sleep", "1"}) {
		t.Errorf("direct Args = %q", got)
	}
	s, _ := Parse("sleep $N")
	if got := s.Args(); !slices.Equal(got, []string{"/bin/sh", "-c", "exec sleep $N"}) {
		t.Errorf("exec Args = %q", got)
	}
}
