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

// errUsage marks an error whose message is a usage problem; the exit code is 2.
var errUsage = errors.New("usage")

// usageError returns an error wrapping errUsage with a one-line message.
func usageError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
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
		fmt.Fprintf(stderr, "visor: %s\n", strings.TrimPrefix(err.Error(), "usage: "))
		return 2
	default:
		fmt.Fprintf(stderr, "visor: %s\n", err)
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
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.usage(e.stderr, fs)
			return err
		}
		return fmt.Errorf("%w: %s", errUsage, err.Error())
	}
	if err := e.globals.check(fs); err != nil {
		return err
	}
	rest := fs.Args()
	if c.Run != nil {
		// Allow flags after positional arguments ("visor app show web -o json").
		rest, err := parseInterspersed(fs, rest)
		if errors.Is(err, flag.ErrHelp) {
			c.usage(e.stderr, fs)
			return err
		}
		if err != nil {
			return fmt.Errorf("%w: %s", errUsage, err.Error())
		}
		if err := e.globals.check(fs); err != nil {
			return err
		}
		e.flags = fs
		return c.Run(ctx, e, rest)
	}
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

// parseInterspersed parses flags that follow positional arguments and
// returns the positional arguments in order. "--" ends flag parsing.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		a := args[0]
		if a == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		if len(a) > 1 && a[0] == '-' {
			if err := fs.Parse(args); err != nil {
				return nil, err
			}
			args = fs.Args()
			continue
		}
		pos = append(pos, a)
		args = args[1:]
	}
	return pos, nil
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
