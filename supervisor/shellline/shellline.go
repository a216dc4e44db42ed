package shellline

import (
	"errors"
	"fmt"
	"strings"

	"mvdan.cc/sh/v3/interp"
	"mvdan.cc/sh/v3/syntax"
)

// Kind is how a line runs.
type Kind int

// The kinds of line; see the package doc.
const (
	// Direct runs Argv by exec, without a shell.
	Direct Kind = iota + 1
	// Exec runs Script under Shell, which replaces itself with Program.
	Exec
	// Script runs Script under Shell as written.
	Script
)

// String returns "direct", "exec" or "script".
func (k Kind) String() string {
	switch k {
	case Direct:
		return "direct"
	case Exec:
		return "exec"
	case Script:
		return "script"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Shells a line runs under.
const (
	// Sh is the POSIX shell, by absolute path.
	Sh = "/bin/sh"
	// Bash runs lines with bash syntax or builtins; looked up in PATH.
	Bash = "bash"
)

// ErrSyntax marks a line that no shell would parse.
var ErrSyntax = errors.New("shellline: invalid shell line")

// ErrEmpty marks a line without a command.
var ErrEmpty = errors.New("shellline: empty command line")

// Line is a parsed command line and how to run it.
type Line struct {
	// Kind says which of the other fields apply.
	Kind Kind
	// Argv (Direct) is the command's words with quotes removed; Argv[0]
	// is the program, without a slash looked up in PATH.
	Argv []string
	// Program (Direct, Exec) is the program the line runs, as written
	// (quotes removed): a name looked up in PATH, or a path with a slash.
	// "" for Script, and for an Exec line that assigns PATH itself.
	Program string
	// Shell (Exec, Script) is Sh or Bash.
	Shell string
	// Script (Exec, Script) is the argument of Shell's -c: the line, with
	// "exec " inserted before the program of an Exec line that had none.
	Script string
}

// Args returns the argv that runs l: Argv for a Direct line, else
// [Shell, "-c", Script].
func (l Line) Args() []string {
	if l.Kind == Direct {
		return append([]string(nil), l.Argv...)
	}
	return []string{l.Shell, "-c", l.Script}
}

// Parse classifies line. Errors wrap ErrEmpty or ErrSyntax.
func Parse(line string) (Line, error) {
	if strings.TrimSpace(line) == "" {
		return Line{}, ErrEmpty
	}
	f, err := parse(line, syntax.LangPOSIX)
	if err != nil {
		if _, berr := parse(line, syntax.LangBash); berr != nil {
			return Line{}, fmt.Errorf("%w %q: %v", ErrSyntax, line, err)
		}
		return Line{Kind: Script, Shell: Bash, Script: line}, nil
	}
	if len(f.Stmts) == 0 {
		return Line{}, fmt.Errorf("%w: %q has only comments", ErrEmpty, line)
	}
	shell := Sh
	if needsBash(f) {
		shell = Bash
	}
	script := Line{Kind: Script, Shell: shell, Script: line}
	if len(f.Stmts) != 1 {
		return script, nil
	}
	st := f.Stmts[0]
	call, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || st.Negated || st.Background || st.Coprocess || len(call.Args) == 0 {
		return script, nil
	}
	// Leading `exec` words without options: the line is the program.
	args, execed := call.Args, false
	for len(args) > 0 && literal(args[0]) == "exec" {
		args, execed = args[1:], true
	}
	if len(args) == 0 || strings.HasPrefix(literal(args[0]), "-") {
		return script, nil // exec alone (redirections) or with options
	}
	name := literal(args[0])
	if name == "" || isBuiltin(name) {
		return script, nil
	}
	words := make([]string, len(args))
	plain := len(call.Assigns) == 0 && len(st.Redirs) == 0
	for i, w := range args {
		if words[i] = literal(w); words[i] == "" && !isEmptyQuote(w) {
			plain = false
		}
	}
	if plain {
		return Line{Kind: Direct, Argv: words, Program: name}, nil
	}
	l := Line{Kind: Exec, Program: name, Shell: shell, Script: line}
	for _, a := range call.Assigns {
		if a.Name != nil && a.Name.Value == "PATH" {
			l.Program = "" // the shell finds it in a PATH of its own
		}
	}
	if !execed {
		off := args[0].Pos().Offset()
		l.Script = line[:off] + "exec " + line[off:]
	}
	return l, nil
}

func parse(line string, lang syntax.LangVariant) (*syntax.File, error) {
	return syntax.NewParser(syntax.Variant(lang)).Parse(strings.NewReader(line), "")
}

// bashOnly are commands that bash has and POSIX sh (dash) has not.
var bashOnly = map[string]bool{
	"source": true, "[[": true, "declare": true, "typeset": true, "let": true,
	"shopt": true, "mapfile": true, "readarray": true, "pushd": true, "popd": true,
	"dirs": true, "builtin": true, "caller": true, "enable": true, "disown": true,
}

// needsBash reports whether f calls a command only bash has.
func needsBash(f *syntax.File) bool {
	found := false
	syntax.Walk(f, func(n syntax.Node) bool {
		if c, ok := n.(*syntax.CallExpr); ok && len(c.Args) > 0 && bashOnly[c.Args[0].Lit()] {
			found = true
		}
		return !found
	})
	return found
}

// isBuiltin reports whether name is a shell builtin: the shell, not exec,
// must run it. mvdan.cc/sh/v3/interp keeps the list (POSIX special and
// regular built-ins, bash's, and the utilities shells build in).
func isBuiltin(name string) bool {
	return interp.IsBuiltin(name) || bashOnly[name] || name == "readonly" || name == "local"
}

// literal returns w with its quotes removed if that is all the shell would
// do to it (no expansion, glob, tilde or brace), else "".
func literal(w *syntax.Word) string {
	var b strings.Builder
	for _, p := range w.Parts {
		switch p := p.(type) {
		case *syntax.Lit:
			if strings.ContainsAny(p.Value, "*?[{}~") {
				return ""
			}
			unescape(&b, p.Value, false)
		case *syntax.SglQuoted:
			if p.Dollar {
				return ""
			}
			b.WriteString(p.Value)
		case *syntax.DblQuoted:
			if p.Dollar {
				return ""
			}
			for _, q := range p.Parts {
				lit, ok := q.(*syntax.Lit)
				if !ok {
					return ""
				}
				unescape(&b, lit.Value, true)
			}
		default:
			return ""
		}
	}
	return b.String()
}

// isEmptyQuote reports whether w is only empty quotes (a pair of single
// or of double quotes), a literal empty argument.
func isEmptyQuote(w *syntax.Word) bool {
	for _, p := range w.Parts {
		switch p := p.(type) {
		case *syntax.SglQuoted:
			if p.Dollar || p.Value != "" {
				return false
			}
		case *syntax.DblQuoted:
			if p.Dollar || len(p.Parts) != 0 {
				return false
			}
		default:
			return false
		}
	}
	return len(w.Parts) > 0
}

// unescape writes s with the shell's backslash removal: outside quotes a
// backslash quotes any character; inside double quotes only $ ` " \ and
// newline. A backslash-newline is a line continuation and disappears.
func unescape(b *strings.Builder, s string, dquoted bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		next := s[i+1]
		switch {
		case next == '\n':
			i++
		case !dquoted || strings.IndexByte("$`\"\\", next) >= 0:
			b.WriteByte(next)
			i++
		default:
			b.WriteByte(c)
		}
	}
}
