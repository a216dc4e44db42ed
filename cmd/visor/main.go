package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// errUsage marks an error whose message is a usage problem; the exit code
// is 2. Test for it with errors.Is; make one with usageError or asUsage,
// which add no text of their own, so that a usage error wrapped with
// context ("service render: ...") still reads as one message.
var errUsage = errors.New("usage")

// usageErr is an error that matches errUsage and reads as err.
type usageErr struct{ err error }

func (u usageErr) Error() string        { return u.err.Error() }
func (u usageErr) Unwrap() error        { return u.err }
func (u usageErr) Is(target error) bool { return target == errUsage }

// usageError returns a usage error with a one-line message formatted as
// by fmt.Errorf (%w wraps).
func usageError(format string, args ...any) error {
	return usageErr{fmt.Errorf(format, args...)}
}

// asUsage marks err as a usage error, keeping its message and its chain.
func asUsage(err error) error {
	if err == nil || errors.Is(err, errUsage) {
		return err
	}
	return usageErr{err}
}

// joinErrors returns the errors of errs that are not nil as one error on
// one line, separated by "; "; errors.Is and errors.As see each of them.
// It is errors.Join for a CLI whose errors are one line each.
func joinErrors(errs ...error) error {
	var list []error
	for _, err := range errs {
		if err != nil {
			list = append(list, err)
		}
	}
	switch len(list) {
	case 0:
		return nil
	case 1:
		return list[0]
	}
	return joinedError(list)
}

type joinedError []error

func (j joinedError) Error() string {
	msgs := make([]string, len(j))
	for i, err := range j {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (j joinedError) Unwrap() []error { return j }

// errorLine is err's message as the one line run prints after "visor: ":
// an error that spans lines (one from another program, say) is joined.
func errorLine(err error) string {
	lines := strings.FieldsFunc(err.Error(), func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}

// run executes one invocation and returns the process exit code. It is the
// whole program minus os.Exit, so tests can call it.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runContext(ctx, args, stdin, stdout, stderr)
}

// runContext is run with the context that an interrupt cancels passed in, so
// that tests can end following commands (events -f, hosts -w).
func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	err := rootCommand().execute(ctx, e, args)

	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "visor: %s\n", errorLine(err))
		return 2
	default:
		fmt.Fprintf(stderr, "visor: %s\n", errorLine(err))
		return 1
	}
}

// command is one node of the CLI tree: a group with subcommands, or a leaf
// with a Run function. Commands register themselves with register in an
// init function of the file that implements them, one file per area.
type command struct {
	// Name is the word that selects the command ("app", "create").
	Name string
	// Args documents the positional arguments, e.g. "APP [APP...]".
	Args string
	// Short is a one-line description shown in the parent's help.
	Short string
	// Long is optional extra help text.
	Long string
	// Flags declares the command's own flags; global flags are added to
	// every leaf automatically. May be nil.
	Flags func(fs *flag.FlagSet)
	// Run executes a leaf command with the positional arguments left after
	// flag parsing. Nil for groups.
	Run func(ctx context.Context, e *env, args []string) error
	// Subs are the subcommands of a group.
	Subs []*command
	// RawArgs passes the arguments to Run unparsed: the command parses its
	// own flags, global ones included (the agent, which also reads a config
	// file and VISOR_* variables).
	RawArgs bool

	parent *command
}

var topLevel []*command

// register adds a top-level command. Call it from init.
func register(c *command) { topLevel = append(topLevel, c) }

var (
	rootOnce sync.Once
	root     *command
)

// rootCommand returns the command tree, built and linked once: the tree is
// shared by concurrent run calls (tests) and must not be mutated after.
func rootCommand() *command {
	rootOnce.Do(func() {
		root = &command{Name: "visor", Short: "run a fleet's processes from an etcd registry"}
		subs := append([]*command(nil), topLevel...)
		sort.Slice(subs, func(i, j int) bool { return subs[i].Name < subs[j].Name })
		root.Subs = subs
		root.link()
	})
	return root
}

func (c *command) link() {
	for _, s := range c.Subs {
		s.parent = c
		s.link()
	}
}

func (c *command) path() string {
	if c.parent == nil {
		return c.Name
	}
	return c.parent.path() + " " + c.Name
}

// execute parses args for c: global flags and, for a group, the next word
// selects a subcommand; for a leaf, the command's flags and then Run.
func (c *command) execute(ctx context.Context, e *env, args []string) error {
	if c.RawArgs && c.Run != nil {
		return c.Run(ctx, e, args)
	}
	fs := flag.NewFlagSet(c.path(), flag.ContinueOnError)
	// Parse errors are reported once, on one line, by run; usage is printed
	// only for --help.
	fs.SetOutput(io.Discard)
	e.globals.bind(fs)
	if c.Flags != nil {
		c.Flags(fs)
	}
	fs.Usage = func() {}
	if c.Run != nil {
		// Flags may follow positional arguments ("visor app show web -o json").
		rest, err := parseInterspersed(fs, args)
		if errors.Is(err, flag.ErrHelp) {
			c.usage(e.stderr, fs)
			return err
		}
		if err != nil {
			return asUsage(err)
		}
		if err := e.globals.check(fs); err != nil {
			return err
		}
		e.flags = fs
		return c.Run(ctx, e, rest)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.usage(e.stderr, fs)
			return err
		}
		return asUsage(err)
	}
	if err := e.globals.check(fs); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		c.usage(e.stderr, fs)
		return usageError("%s: missing command", c.path())
	}
	if rest[0] == "help" {
		c.usage(e.stdout, fs)
		return nil
	}
	for _, s := range c.Subs {
		if s.Name == rest[0] {
			return s.execute(ctx, e, rest[1:])
		}
	}
	return usageError("%s: unknown command %q (see '%s --help')", c.path(), rest[0], c.path())
}

// parseInterspersed parses args with fs, allowing flags after positional
// arguments, and returns the positional arguments in order. A "--" that is
// not a flag's value ends flag parsing: what follows it is positional, even
// if it starts with "-" ("visor app show -- -x").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if endsWithTerminator(fs, args[:len(args)-len(rest)]) {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// endsWithTerminator reports whether the arguments fs.Parse consumed
// (without error) end with the "--" that stops flag parsing, as opposed to
// a "--" that is a flag's value ("--prefix --").
func endsWithTerminator(fs *flag.FlagSet, consumed []string) bool {
	for i := 0; i < len(consumed); i++ {
		a := consumed[i]
		if a == "--" {
			return i == len(consumed)-1
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // -h or -help: fs.Parse returned flag.ErrHelp
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		i++ // the flag's value
	}
	return false
}

func (c *command) usage(w io.Writer, fs *flag.FlagSet) {
	if c.Run != nil {
		fmt.Fprintf(w, "Usage: %s [flags] %s\n\n%s\n", c.path(), c.Args, c.Short)
	} else {
		fmt.Fprintf(w, "Usage: %s COMMAND [flags]\n\n%s\n\nCommands:\n", c.path(), c.Short)
		for _, s := range c.Subs {
			fmt.Fprintf(w, "  %-10s %s\n", s.Name, s.Short)
		}
	}
	if c.Long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.Long))
	}
	fmt.Fprintf(w, "\nFlags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
}
