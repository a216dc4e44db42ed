package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// rootLong is the top of `visor --help`.
const rootLong = `visor runs a fleet's processes from an etcd registry. Every host runs
"visor agent"; the other commands talk to the registry (etcd) directly, or
to an agent's local API (logs, signal).

Global flags go before or after the command's name. Each global flag can
also be set in the environment (VISOR_ENDPOINTS, VISOR_PREFIX, ... as named
in its help); a flag given on the command line wins.

Exit codes:
  0  success
  1  error (registry, agent or system)
  2  usage: unknown command or flag, bad argument or value
  3  --wait timed out (the change was written; it did not finish in --wait-timeout)`

// usageTemplate is cobra's default usage template, except that a group
// of commands shows only "CMD [command]" as its usage (it runs nothing of
// its own) and the root's flags are titled as the global flags they are.
// The root's commands are listed in groups (commandGroups).
const usageTemplate = `Usage:{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{else}}
  {{.UseLine}}{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}{{$cmds := .Commands}}{{if eq (len .Groups) 0}}

Available Commands:{{range $cmds}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{else}}{{range $group := .Groups}}

{{.Title}}{{range $cmds}}{{if (and (eq .GroupID $group.ID) (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if not .AllChildCommandsHaveGroup}}

Other Commands:{{range $cmds}}{{if (and (eq .GroupID "") (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

{{if .HasParent}}Flags{{else}}Global Flags{{end}}:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global Flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}
`

// newRootCmd returns the command tree of one invocation, writing to e's
// streams. Commands bind their flags into the tree, so a tree serves one
// invocation.
func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:           "visor",
		Short:         "run a fleet's processes from an etcd registry",
		Long:          rootLong,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			e.flags = cmd.Flags()
			return e.globals.resolve(cmd.Flags())
		},
	}
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError("%w; see '%s --help'", err, cmd.CommandPath())
	})
	root.SetUsageTemplate(usageTemplate)
	e.globals.bind(root.PersistentFlags())
	root.AddCommand(
		newAgentCmd(e), newAppCmd(e), newConfigCmd(e), newDoctorCmd(e), newEnvCmd(e),
		newEventsCmd(e), newHostCmd(e), newLogsCmd(e), newLookupCmd(e), newProcCmd(e),
		newPSCmd(e), newRevCmd(e), newScaleCmd(e), newServiceCmd(e), newSignalCmd(e),
		newDeployCmd(e), newDeploysCmd(e), newRollbackCmd(e),
		newTicketCmd(e), newVersionCmd(e),
		newRestartCmd(e), newStopCmd(e), newDemoWebCmd(e), newStatusCmd(e),
	)
	// The plural and top-level spellings from before "host list" and
	// "ticket list" existed; kept working (see README).
	root.AddCommand(
		shortcut(newHostListCmd(e), "hosts", "host list"),
		shortcut(newTicketListCmd(e), "tickets", "ticket list"),
		shortcut(newDrainCmd(e), "drain HOST", "host drain"),
		shortcut(newUndrainCmd(e), "undrain HOST", "host undrain"),
	)
	groupCommands(root)
	root.SetHelpCommand(newHelpCmd())
	root.InitDefaultCompletionCmd()
	if c := findSub(root, "completion"); c != nil {
		c.Short = "print a shell completion script: bash, zsh, fish or powershell"
	}
	asGroup(root)
	return root
}

// commandGroups are the headings of `visor --help`, with their commands;
// the rest (help, completion, version) are listed under "Other Commands".
var commandGroups = []struct {
	id, title string
	names     []string
}{
	{"apps", "Apps and their processes:", []string{"app", "env", "rev", "proc", "scale", "deploy", "deploys", "rollback", "ps", "restart", "stop", "logs", "signal", "lookup"}},
	{"fleet", "The fleet:", []string{"status", "host", "hosts", "drain", "undrain", "ticket", "tickets", "events", "config", "doctor"}},
	{"hostagent", "On a host:", []string{"agent", "service"}},
}

// groupCommands puts the root's commands under their headings.
func groupCommands(root *cobra.Command) {
	for _, g := range commandGroups {
		root.AddGroup(&cobra.Group{ID: g.id, Title: g.title})
		for _, name := range g.names {
			findSub(root, name).GroupID = g.id
		}
	}
}

// shortcut renames c, a subcommand's constructor's result, for use at
// the top level as another spelling of the command at path.
func shortcut(c *cobra.Command, use, path string) *cobra.Command {
	c.Use, c.Aliases = use, nil
	c.Short += " (same as '" + path + "')"
	return c
}

// group returns c as a command group of subs: run alone, it fails with
// "missing command"; with an unknown subcommand, it suggests close names.
func group(c *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	c.AddCommand(subs...)
	asGroup(c)
	return c
}

func asGroup(c *cobra.Command) {
	c.Args = cobra.ArbitraryArgs
	c.SuggestionsMinimumDistance = 2
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			cmd.SetOut(cmd.ErrOrStderr())
			_ = cmd.Usage()
			return usageError("missing command (see '%s --help')", cmd.CommandPath())
		}
		if args[0] == "help" {
			return cmd.Help()
		}
		return unknownCommand(cmd, args[0])
	}
}

// unknownCommand is the usage error for an unknown subcommand name of c,
// with the names it may have meant.
func unknownCommand(c *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, c.CommandPath())
	if s := c.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(quoteAll(s), " or "))
	}
	return usageError("%s; see '%s --help'", msg, c.CommandPath())
}

func quoteAll(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = fmt.Sprintf("%q", x)
	}
	return out
}

// newHelpCmd is `visor help [COMMAND...]`: the command's help on stdout,
// the same as COMMAND --help.
func newHelpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND...]",
		Short: "show the help of any command",
		Args:  cobra.ArbitraryArgs,
		ValidArgsFunction: func(c *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			target, _, err := c.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var names []cobra.Completion
			for _, s := range target.Commands() {
				if s.IsAvailableCommand() {
					names = append(names, cobra.CompletionWithDesc(s.Name(), s.Short))
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			target, rest, err := c.Root().Find(args)
			if err != nil {
				return asUsage(err)
			}
			if len(rest) > 0 {
				return unknownCommand(target, rest[0])
			}
			target.InitDefaultHelpFlag() // as --help shows it
			return target.Help()
		},
	}
}

// runWith adapts a command's run function to cobra: it gets the command's
// context and e, whose flags are the command's.
func runWith(e *env, fn func(ctx context.Context, e *env, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		e.flags = cmd.Flags()
		return fn(cmd.Context(), e, args)
	}
}

// normalizeArgs rewrites the single-dash long flags Go's flag package
// accepted ("-endpoints X", "-dev", "-o=json") into pflag's spelling
// ("--endpoints X"), and "--w" into "-w", for the command each flag
// belongs to, so that every command line that worked before cobra still
// does (scripts, installed service units). It stops at "--" and at a
// command that parses its own arguments (agent, service install).
func normalizeArgs(root *cobra.Command, args []string) []string {
	if len(args) > 0 && strings.HasPrefix(args[0], "__complete") {
		return args // shell completion: words as typed
	}
	cmd, descend := root, true
	return normalize(commandFlags(root), args, func(a string) (*pflag.FlagSet, bool) {
		sub := findSub(cmd, a)
		if !descend || sub == nil {
			descend = false
			return nil, false
		}
		cmd = sub
		return commandFlags(sub), sub.DisableFlagParsing
	})
}

// normalize rewrites args as normalizeArgs does, for flag set fs. enter,
// if not nil, is called with each positional argument: it returns the
// flag set of the subcommand the argument names (nil if none), and
// whether that subcommand parses its own arguments (then normalize stops).
func normalize(fs *pflag.FlagSet, args []string, enter func(string) (*pflag.FlagSet, bool)) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		out = append(out, a)
		if len(a) < 2 || a[0] != '-' {
			if enter == nil {
				continue
			}
			sub, stop := enter(a)
			if stop {
				return append(out, args[i+1:]...)
			}
			if sub != nil {
				fs = sub
			}
			continue
		}
		f, norm := normalizeFlag(fs, a)
		out[len(out)-1] = norm
		if f != nil && !strings.Contains(a, "=") && f.NoOptDefVal == "" && i+1 < len(args) {
			i++
			out = append(out, args[i]) // the flag's value, as given
		}
	}
	return out
}

// normalizeFlag returns the flag of fs that argument a names (nil if
// none) and a in pflag's spelling.
func normalizeFlag(fs *pflag.FlagSet, a string) (*pflag.Flag, string) {
	body := strings.TrimLeft(a, "-")
	name, _, _ := strings.Cut(body, "=")
	switch {
	case a == "-h":
		return nil, a
	case name == "help":
		return nil, "--" + body // "-help", "-help=false"
	case len(name) == 1:
		if f := fs.ShorthandLookup(name); f != nil {
			return f, "-" + body
		}
		return nil, a
	}
	f := fs.Lookup(name)
	if f == nil || strings.HasPrefix(a, "--") {
		return f, a // unknown, or a cluster of shorthands ("-fw"): pflag says
	}
	return f, "--" + body
}

// commandFlags returns every flag cmd accepts: its own and the global ones.
func commandFlags(cmd *cobra.Command) *pflag.FlagSet {
	fs := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	fs.AddFlagSet(cmd.Flags())
	fs.AddFlagSet(cmd.PersistentFlags())
	fs.AddFlagSet(cmd.InheritedFlags())
	return fs
}

// findSub returns cmd's subcommand called name (or an alias), or nil.
func findSub(cmd *cobra.Command, name string) *cobra.Command {
	for _, s := range cmd.Commands() {
		if s.Name() == name || s.HasAlias(name) {
			return s
		}
	}
	return nil
}
