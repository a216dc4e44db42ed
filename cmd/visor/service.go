package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/visorhq/visor/systemd"
)

func newServiceCmd(e *env) *cobra.Command {
	install := &cobra.Command{
		Use:   "install [--init I] [--root DIR] [--binary PATH] [--user USER] [--] [agent flags...]",
		Short: "install the agent service with the given agent flags (idempotent)",
		Long: `install's own flags come first; the agent's flags (see 'visor agent --help')
follow, after "--" or from the first flag install does not know.`,
		DisableFlagParsing:    true, // the agent's flags follow install's own
		DisableFlagsInUseLine: true,
		RunE:                  withHelp(e, runServiceInstall),
	}
	serviceInstallFlags(install.Flags(), false)
	render := &cobra.Command{
		Use:   "render [--init systemd|launchd] [--binary PATH] [--user USER] [--log-path FILE] [--] [agent flags...]",
		Short: "print the unit or plist install would write",
		Long: `render only checks the agent flags' syntax; install also checks that the
config file exists and parses, as "visor agent" would.`,
		DisableFlagParsing:    true,
		DisableFlagsInUseLine: true,
		RunE:                  withHelp(e, runServiceRender),
	}
	serviceInstallFlags(render.Flags(), true)
	uninstall := &cobra.Command{Use: "uninstall", Short: "stop, disable and remove the agent service", RunE: runWith(e, runServiceUninstall)}
	serviceFlags(uninstall.Flags())
	status := &cobra.Command{Use: "status", Short: "show whether the agent service is installed and running", RunE: runWith(e, runServiceStatus)}
	serviceFlags(status.Flags())
	return group(&cobra.Command{
		Use:   "service",
		Short: "install and control the agent as a system service (systemd, launchd)",
		Long: `install writes a systemd unit (/etc/systemd/system/visor-agent.service) or a
launchd plist (/Library/LaunchDaemons/visor-agent.plist) that runs
"visor agent" with the given agent flags; on hosts running neither it falls back
to github.com/kardianos/service's own definition (e.g. a SysV script) and says so.
install never starts the service: run "visor service start".`,
	},
		install, uninstall, render,
		serviceControl(e, "start", "start the installed agent service"),
		serviceControl(e, "stop", "stop the agent service (instances keep running)"),
		serviceControl(e, "restart", "restart the agent service (instances are re-adopted)"),
		status,
	)
}

// serviceFlags declares the flags every service subcommand shares.
func serviceFlags(fs *pflag.FlagSet) {
	fs.String("init", "", "init system: systemd or launchd (default: detect)")
	fs.String("root", "/", "resolve every path written or removed under this directory (packaging, tests)")
}

// serviceInstallFlags declares install's and render's own flags, which
// precede the agent flags.
func serviceInstallFlags(fs *pflag.FlagSet, render bool) {
	if render {
		fs.String("init", defaultRenderInit(), "init system: systemd or launchd")
		fs.String("log-path", systemd.DefaultLaunchdLogPath, "launchd: file for the agent's stdout and stderr")
	} else {
		serviceFlags(fs)
	}
	fs.String("binary", "", "absolute path of the visor binary the service runs (default: this executable)")
	fs.String("user", "", "run the agent as this user (default: root)")
}

func defaultRenderInit() string {
	if runtime.GOOS == "darwin" {
		return systemd.InitLaunchd
	}
	return systemd.InitSystemd
}

// errHelpAsked is what splitServiceArgs returns for -h or --help.
var errHelpAsked = errors.New("help asked for")

// splitServiceArgs parses the leading flags of install/render that fs
// declares and returns the rest, the agent's flags. The agent's flags start
// at "--" or at the first flag fs does not know.
func splitServiceArgs(fs *pflag.FlagSet, args []string) ([]string, error) {
	i := 0
	for i < len(args) {
		a := args[i]
		if a == "--" {
			return args[i+1:], fs.Parse(normalize(fs, args[:i], nil))
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "h" || name == "help" {
			return nil, errHelpAsked
		}
		if fs.Lookup(name) == nil {
			break
		}
		i++
		if !hasValue {
			i++ // all of install's own flags take a value
		}
	}
	if i > len(args) {
		return nil, fmt.Errorf("flag needs an argument: %s", args[len(args)-1])
	}
	if err := fs.Parse(normalize(fs, args[:i], nil)); err != nil {
		return nil, err
	}
	return args[i:], nil
}

// validateAgentArgs checks the agent's flags, environment and config file
// as "visor agent" would at start-up, without side effects.
func validateAgentArgs(args []string) error {
	_, err := parseAgentFlags(args)
	return err
}

// agentPathFlags are the agent flags whose value is a file or directory:
// made absolute, because a service starts in "/".
var agentPathFlags = map[string]bool{
	"config": true, "data-dir": true, "run-dir": true, "dev-data-dir": true,
	"tls-cert": true, "tls-key": true, "ca-file": true, "cert-file": true, "key-file": true,
}

// agentSecretFlags end up readable by everyone in a unit file.
var agentSecretFlags = map[string]bool{"token": true, "password": true}

// serviceAgentArgs checks the agent flags' syntax and returns them in a
// canonical form for the service definition ("-name=value", paths made
// absolute), with -config split out, and the names of secrets given.
func serviceAgentArgs(args []string) (configPath string, out, secrets []string, err error) {
	var o agentOptions
	fs := newAgentFlagSet(&o)
	if err := fs.Parse(normalize(fs, args, nil)); err != nil {
		return "", nil, nil, usageError("agent flags: %v", err)
	}
	if fs.NArg() > 0 {
		return "", nil, nil, usageError("agent flags: unexpected argument %q", fs.Arg(0))
	}
	if err := o.globals.check(fs); err != nil {
		return "", nil, nil, usageError("agent flags: %w", err)
	}
	fs.Visit(func(f *pflag.Flag) { // in the order of their names
		v := f.Value.String()
		if agentPathFlags[f.Name] && v != "" && err == nil {
			v, err = filepath.Abs(v)
		}
		if agentSecretFlags[f.Name] {
			secrets = append(secrets, "-"+f.Name)
		}
		if f.Name == "config" {
			configPath = v
			return
		}
		out = append(out, "-"+f.Name+"="+v)
	})
	return configPath, out, secrets, err
}

// serviceOptions builds the rendered service's options from install's and
// render's flags and the agent flags.
func serviceOptions(fs *pflag.FlagSet, agentArgs []string) (systemd.Options, []string, error) {
	cfg, args, secrets, err := serviceAgentArgs(agentArgs)
	if err != nil {
		return systemd.Options{}, nil, err
	}
	o := systemd.Options{
		Binary:     fs.Lookup("binary").Value.String(),
		ConfigPath: cfg,
		Args:       args,
		User:       fs.Lookup("user").Value.String(),
	}
	if f := fs.Lookup("log-path"); f != nil {
		o.LogPath = f.Value.String()
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, nil, fmt.Errorf("find this executable (give -binary): %w", err)
		}
		if o.Binary, err = filepath.EvalSymlinks(exe); err != nil {
			return o, nil, fmt.Errorf("find this executable (give -binary): %w", err)
		}
	} else if !filepath.IsAbs(o.Binary) {
		return o, nil, usageError("-binary %q is not an absolute path", o.Binary)
	}
	return o, secrets, nil
}

func newServiceFlagSet(name string, render bool) *pflag.FlagSet {
	fs := pflag.NewFlagSet("visor service "+name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	serviceInstallFlags(fs, render)
	return fs
}

// runServiceInstall is `visor service install`: validate everything, then
// write the service definition and tell the init system.
func runServiceInstall(ctx context.Context, e *env, args []string) error {
	fs := newServiceFlagSet("install", false)
	agentArgs, err := splitServiceArgs(fs, args)
	if err != nil {
		if errors.Is(err, errHelpAsked) {
			return err
		}
		return usageError("service install: %v", err)
	}
	// Bad input fails here, before anything is written.
	if err := validateAgentArgs(agentArgs); err != nil {
		return fmt.Errorf("service install: %w", err)
	}
	opts, secrets, err := serviceOptions(fs, agentArgs)
	if err != nil {
		return fmt.Errorf("service install: %w", err)
	}
	for _, s := range secrets {
		fmt.Fprintf(e.stderr, "warning: %s is written into the service definition, which others can read; prefer the config file\n", s)
	}
	m, err := newServiceManager(e, fs, opts)
	if err != nil {
		return fmt.Errorf("service install: %w", err)
	}
	res, err := m.Install(ctx)
	if err != nil {
		return fmt.Errorf("service install: %w", err)
	}
	switch {
	case res.Fallback:
		fmt.Fprintf(e.stdout, "neither systemd nor launchd runs this host: installed %s's own %s definition through kardianos/service instead (no readiness notification, no KillMode=process)\n", systemd.ServiceName, res.Init)
	case res.Changed:
		fmt.Fprintf(e.stdout, "wrote %s\n", filepath.Join(fs.Lookup("root").Value.String(), res.Path))
	default:
		fmt.Fprintf(e.stdout, "%s is already installed and up to date\n", filepath.Join(fs.Lookup("root").Value.String(), res.Path))
	}
	switch {
	case res.Reloaded:
		fmt.Fprintf(e.stdout, "systemd reloaded, %s.service enabled at boot; start it now with: visor service start\n", systemd.ServiceName)
	case res.Init == systemd.InitSystemd:
		fmt.Fprintf(e.stdout, "systemd is not running this host: daemon-reload and enable skipped\n")
	}
	if res.Changed && !res.Fallback && res.Init == systemd.InitSystemd && res.Reloaded {
		fmt.Fprintf(e.stdout, "if the agent is running, apply the change with: visor service restart\n")
	}
	return nil
}

// runServiceRender is `visor service render`: print the definition.
func runServiceRender(_ context.Context, e *env, args []string) error {
	fs := newServiceFlagSet("render", true)
	agentArgs, err := splitServiceArgs(fs, args)
	if err != nil {
		if errors.Is(err, errHelpAsked) {
			return err
		}
		return usageError("service render: %v", err)
	}
	opts, _, err := serviceOptions(fs, agentArgs)
	if err != nil {
		return fmt.Errorf("service render: %w", err)
	}
	out, err := systemd.Render(fs.Lookup("init").Value.String(), opts)
	if errors.Is(err, systemd.ErrUnknownInit) {
		return usageError("service render: %v", err)
	}
	if err != nil {
		return fmt.Errorf("service render: %w", err)
	}
	_, err = e.stdout.Write(out)
	return err
}

// newServiceManager returns the Manager the -init and -root flags in fs
// select; its warnings (a failed best-effort stop) go to stderr.
func newServiceManager(e *env, fs *pflag.FlagSet, opts systemd.Options) (*systemd.Manager, error) {
	m, err := systemd.New(systemd.Config{
		Init:    fs.Lookup("init").Value.String(),
		Root:    fs.Lookup("root").Value.String(),
		Options: opts,
		Logger:  hclog.New(&hclog.LoggerOptions{Name: "visor", Level: hclog.Warn, Output: e.stderr}),
	})
	if errors.Is(err, systemd.ErrUnknownInit) {
		return nil, usageError("%v", err)
	}
	return m, err
}

// runServiceUninstall is `visor service uninstall`. Nothing installed is
// not an error: it says so and exits 0.
func runServiceUninstall(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return usageError("service uninstall: unexpected argument %q", args[0])
	}
	m, err := newServiceManager(e, e.flags, systemd.Options{})
	if err != nil {
		return fmt.Errorf("service uninstall: %w", err)
	}
	res, err := m.Uninstall(ctx)
	if errors.Is(err, systemd.ErrNotInstalled) {
		fmt.Fprintf(e.stdout, "%s is not installed (%s); nothing to do\n", systemd.ServiceName, m.Init())
		return nil
	}
	if err != nil {
		return fmt.Errorf("service uninstall: %w", err)
	}
	if res.Fallback {
		fmt.Fprintf(e.stdout, "removed %s's %s definition\n", systemd.ServiceName, res.Init)
	} else {
		fmt.Fprintf(e.stdout, "removed %s\n", filepath.Join(e.flags.Lookup("root").Value.String(), res.Path))
	}
	return nil
}

func serviceControl(e *env, action, short string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   action,
		Short: short,
		RunE: runWith(e, func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usageError("service %s: unexpected argument %q", action, args[0])
			}
			m, err := newServiceManager(e, e.flags, systemd.Options{})
			if err != nil {
				return fmt.Errorf("service %s: %w", action, err)
			}
			do := map[string]func(context.Context) error{"start": m.Start, "stop": m.Stop, "restart": m.Restart}[action]
			if err := do(ctx); err != nil {
				return fmt.Errorf("service %s: %w", action, err)
			}
			fmt.Fprintf(e.stdout, "%s: %s sent to %s\n", systemd.ServiceName, action, m.Init())
			return nil
		}),
	}
	serviceFlags(cmd.Flags())
	return cmd
}

// withHelp is runWith for a command that parses its own arguments: fn
// returns errHelpAsked for -h or --help, and the command's help is printed.
func withHelp(e *env, fn func(ctx context.Context, e *env, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		e.flags = cmd.Flags()
		if err := fn(cmd.Context(), e, args); !errors.Is(err, errHelpAsked) {
			return err
		}
		return cmd.Help()
	}
}

// runServiceStatus is `visor service status [-o json]`.
func runServiceStatus(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return usageError("service status: unexpected argument %q", args[0])
	}
	m, err := newServiceManager(e, e.flags, systemd.Options{})
	if err != nil {
		return fmt.Errorf("service status: %w", err)
	}
	st, err := m.Status(ctx)
	if err != nil {
		return fmt.Errorf("service status: %w", err)
	}
	return e.print(st, func(w io.Writer) {
		fmt.Fprintf(w, "SERVICE\tINIT\tINSTALLED\tSTATE\tPATH\n")
		fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\n", systemd.ServiceName, st.Init, st.Installed, st.State, st.Path)
		if st.Detail != "" {
			fmt.Fprintf(w, "\n%s\n", st.Detail)
		}
	})
}
