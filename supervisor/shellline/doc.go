// Package shellline decides how a command line of a process type (a
// Procfile line or a proc type's command) is run, with a real shell parser
// (mvdan.cc/sh/v3/syntax) instead of word lists. It is the one place where
// the agent and the supervisor classify a line, so the two cannot drift
// (issue 13, item 4):
//
//   - Direct: one simple command whose words are all literal once quotes
//     are removed (no expansion, glob, redirection, assignment, pipe or
//     control flow) and whose name is not a shell builtin. It runs by exec
//     of its program, found in PATH, with no shell at all. A leading
//     `exec` (without options) is dropped: `exec python3 -m http.server
//     8000` runs python3 directly.
//   - Exec: one simple command whose name is a literal program (not a
//     builtin) but whose arguments, assignments or redirections need the
//     shell (`exec python3 -m http.server $PORT`, `FOO=1 ./run >log`). The
//     shell runs the line with `exec` before the program, so it expands the
//     words and then replaces itself with the program: the program is the
//     instance's process, not a child of a shell.
//   - Script: anything else (lists, pipes, `&&`, control flow such as
//     `until`/`case`/`if`, `!`, subshells, builtins such as `:`, `exit`,
//     `cd`, `export`, `.`, `source`, `exec` with options or without a
//     program) runs as written under the shell.
//
// The shell is /bin/sh, except for a line using bash syntax that POSIX sh
// does not parse (arrays, `[[`, `function`, ...) or a bash-only builtin
// (`source`, `declare`, `shopt`, ...): dash, Debian's /bin/sh, has no
// `source`, so such a line runs under bash, found in PATH. A line that
// parses neither as POSIX sh nor as bash is an error naming the position.
//
// The package only parses; it runs nothing and looks nothing up. The
// caller checks that Program exists (a clear "not found" before the start,
// not a crash loop of exit code 127) and resolves it and Shell in PATH.
// It imports nothing of Visor.
package shellline
