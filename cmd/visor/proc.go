package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/visorhq/visor/registry"
)

func newProcCmd(e *env) *cobra.Command {
	set := &cobra.Command{
		Use:   "set APP PROC [flags]",
		Short: "create or change a process type",
		Long: `proc set creates the process type or changes only the settings given as
flags; the others keep their values. --memory takes bytes with an optional
binary unit (512K, 256M, 1G; 0 = unlimited). --cpu takes millicores ("500" or
"500m") or cores with a decimal point ("0.5", "2.0"), at least 10m (0 =
unlimited). --health-type none removes the health check.

A process type belongs to the app's next release: a revision scaled for the
first time takes all the app's process types (and env) of that moment and
keeps them, so changing one here does not change what a released revision
runs, nor its running or restarted instances (visor rev show APP REV lists a
revision's own). Ship a change with a new revision: visor rev register APP
NEWREV --from REV, then scale it.`,
		RunE: runWith(e, runProcSet),
	}
	procSetFlags(set.Flags())
	return group(&cobra.Command{Use: "proc", Short: "set, list and delete an app's process types"},
		set,
		&cobra.Command{Use: "list APP", Aliases: []string{"ls"}, Short: "list an app's process types", RunE: runWith(e, runProcList)},
		&cobra.Command{Use: "delete APP PROC", Short: "delete a process type", RunE: runWith(e, runProcDelete)},
	)
}

// kvFlag is a repeatable KEY=VALUE flag.
type kvFlag struct{ vals []string }

func (f *kvFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(f.vals, ",")
}

func (f *kvFlag) Set(s string) error {
	if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	f.vals = append(f.vals, s)
	return nil
}

func (f *kvFlag) Get() any { return f.vals }

func (f *kvFlag) Type() string { return "KEY=VALUE" }

func procSetFlags(fs *pflag.FlagSet) {
	fs.String("command", "", `shell command line ("" = from the artifact's Procfile)`)
	fs.String("restart", "", "restart policy: always, on-failure or never")
	fs.Int("max-restarts", 0, "restarts allowed before the instance fails (0 = unlimited)")
	fs.String("stop-signal", "", "signal that asks the process to stop: TERM (default), INT, QUIT, HUP, KILL, USR1, USR2, WINCH or ALRM")
	fs.Duration("stop-timeout", 0, "grace period after the stop signal before SIGKILL")
	fs.Duration("min-uptime", 0, "uptime after which a run counts as a successful start")
	fs.String("health-type", "", "health check: exec, tcp, http, or none to remove it")
	fs.String("health-cmd", "", "health check command line (exec), run with sh -c")
	fs.String("health-path", "", "health check URL path (http)")
	fs.Duration("health-period", 0, "interval between health checks")
	fs.Duration("health-timeout", 0, "timeout of one health check")
	fs.Int("health-threshold", 0, "consecutive failures that make the instance unhealthy")
	fs.String("memory", "", "memory limit, e.g. 256M (0 = unlimited)")
	fs.String("cpu", "", `CPU limit: millicores ("500") or cores ("0.5")`)
	fs.Int("pids", 0, "maximum number of processes (0 = unlimited)")
	fs.String("user", "", "user the process runs as")
	fs.String("group", "", "group the process runs as (with --user only; the user's supplementary groups apply)")
	fs.Var(&kvFlag{}, "env", "process environment variable KEY=VALUE (repeatable)")
	strategyFlags(fs) // how "visor deploy" moves its instances (ProcType.Update)
}

// procOut is the CLI's JSON form of a process type. Durations are strings
// such as "10s".
type procOut struct {
	App         string            `json:"app"`
	Name        string            `json:"name"`
	Command     string            `json:"command"`
	Env         map[string]string `json:"env"`
	Restart     restartOut        `json:"restart"`
	StopSignal  string            `json:"stop_signal"`
	StopTimeout string            `json:"stop_timeout"`
	MinUptime   string            `json:"min_uptime"`
	Health      *healthOut        `json:"health"`
	Limits      limitsOut         `json:"limits"`
	User        string            `json:"user"`
	Group       string            `json:"group"`
	Update      *strategyOut      `json:"update"`
}

type restartOut struct {
	Policy       string `json:"policy"`
	InitialDelay string `json:"initial_delay"`
	MaxDelay     string `json:"max_delay"`
	ResetAfter   string `json:"reset_after"`
	MaxRestarts  int    `json:"max_restarts"`
}

type healthOut struct {
	Type             string   `json:"type"`
	Command          []string `json:"command"`
	Path             string   `json:"path"`
	Period           string   `json:"period"`
	Timeout          string   `json:"timeout"`
	FailureThreshold int      `json:"failure_threshold"`
}

type limitsOut struct {
	MemoryBytes int64 `json:"memory_bytes"`
	CPUMillis   int   `json:"cpu_millis"`
	Pids        int   `json:"pids"`
}

func newProcOut(p registry.ProcType) procOut {
	out := procOut{
		App:         p.App,
		Name:        p.Name,
		Command:     p.Command,
		Env:         p.Env,
		StopSignal:  p.StopSignal,
		StopTimeout: p.StopTimeout.String(),
		MinUptime:   p.MinUptime.String(),
		Restart: restartOut{
			Policy:       p.Restart.Policy,
			InitialDelay: p.Restart.InitialDelay.String(),
			MaxDelay:     p.Restart.MaxDelay.String(),
			ResetAfter:   p.Restart.ResetAfter.String(),
			MaxRestarts:  p.Restart.MaxRestarts,
		},
		Limits: limitsOut{MemoryBytes: p.Limits.MemoryBytes, CPUMillis: p.Limits.CPUMillis, Pids: p.Limits.Pids},
		User:   p.User,
		Group:  p.Group,
		Update: newUpdateOut(p.Update),
	}
	if out.Env == nil {
		out.Env = map[string]string{}
	}
	if out.Restart.Policy == "" {
		out.Restart.Policy = "always"
	}
	if out.StopSignal == "" {
		out.StopSignal = "TERM"
	}
	if h := p.Health; h != nil {
		out.Health = &healthOut{
			Type:             string(h.Type),
			Command:          h.Command,
			Path:             h.Path,
			Period:           h.Period.String(),
			Timeout:          h.Timeout.String(),
			FailureThreshold: h.FailureThreshold,
		}
		if out.Health.Command == nil {
			out.Health.Command = []string{}
		}
	}
	return out
}

// stopSignals are the signals proc set accepts as a stop signal by name:
// the seed's 30 (gocircuit Proc.Signal) less the job-control ones. A
// number from 1 to 64 is accepted too; the agent refuses one its OS lacks
// or that pauses a process (issue 17, item 7).
var stopSignals = map[string]bool{
	"ABRT": true, "ALRM": true, "BUS": true, "CHLD": true, "FPE": true, "HUP": true,
	"ILL": true, "INT": true, "IO": true, "IOT": true, "KILL": true, "PIPE": true,
	"PROF": true, "QUIT": true, "SEGV": true, "SYS": true, "TERM": true, "TRAP": true,
	"URG": true, "USR1": true, "USR2": true, "VTALRM": true, "WINCH": true, "XCPU": true,
	"XFSZ": true,
}

// jobControlSignals pause or resume a process rather than ask it to stop.
// The supervisor sends the stop signal and then SIGCONT, so with one of
// these every stop would wait out the stop timeout and end in SIGKILL.
var jobControlSignals = map[string]bool{"STOP": true, "TSTP": true, "CONT": true, "TTIN": true, "TTOU": true}

// parseSignal normalizes a stop signal's name ("term", "SIGTERM" → "TERM").
func parseSignal(flagName, s string) (string, error) {
	n := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "SIG")
	if jobControlSignals[n] {
		return "", usageError("--%s %q: a job-control signal does not stop a process; want TERM, INT, QUIT or HUP", flagName, s)
	}
	if num, err := strconv.Atoi(n); err == nil && n == strconv.Itoa(num) && num >= 1 && num <= 64 {
		return n, nil
	}
	if !stopSignals[n] {
		return "", usageError("--%s %q: want a signal name such as TERM, INT, QUIT or HUP, or a number from 1 to 64", flagName, s)
	}
	return n, nil
}

// procEdit is one change that proc set's flags make to a process type.
// It returns an error only for what depends on the stored process type (a
// health flag without a health check to change).
type procEdit func(p *registry.ProcType) error

// parseProcFlags checks every flag given on the command line and returns
// the changes they make. It runs before the registry is dialled, so that a bad flag is reported as such even when
// etcd is unreachable.
func parseProcFlags(e *env) ([]procEdit, error) {
	var edits []procEdit
	add := func(fn procEdit) { edits = append(edits, fn) }
	if flagIsSet(e, "command") {
		cmd := flagString(e, "command")
		add(func(p *registry.ProcType) error { p.Command = cmd; return nil })
	}
	if flagIsSet(e, "restart") {
		switch v := flagString(e, "restart"); v {
		case "always", "on-failure", "never":
			add(func(p *registry.ProcType) error { p.Restart.Policy = v; return nil })
		default:
			return nil, usageError("--restart %q: want always, on-failure or never", v)
		}
	}
	if flagIsSet(e, "max-restarts") {
		n := flagValue[int](e, "max-restarts")
		if n < 0 {
			return nil, usageError("--max-restarts %d: must not be negative", n)
		}
		add(func(p *registry.ProcType) error { p.Restart.MaxRestarts = n; return nil })
	}
	if flagIsSet(e, "stop-signal") {
		sig, err := parseSignal("stop-signal", flagString(e, "stop-signal"))
		if err != nil {
			return nil, err
		}
		add(func(p *registry.ProcType) error { p.StopSignal = sig; return nil })
	}
	for _, d := range []struct {
		name string
		dst  func(p *registry.ProcType) *registry.Duration
	}{
		{"stop-timeout", func(p *registry.ProcType) *registry.Duration { return &p.StopTimeout }},
		{"min-uptime", func(p *registry.ProcType) *registry.Duration { return &p.MinUptime }},
	} {
		if flagIsSet(e, d.name) {
			v := flagValue[time.Duration](e, d.name)
			if v < 0 {
				return nil, usageError("--%s %s: must not be negative", d.name, v)
			}
			add(func(p *registry.ProcType) error { *d.dst(p) = registry.Duration(v); return nil })
		}
	}
	health, err := parseHealthFlags(e)
	if err != nil {
		return nil, err
	}
	if health != nil {
		add(health)
	}
	more, err := parseMoreProcFlags(e)
	if err != nil {
		return nil, err
	}
	return append(edits, more...), nil
}

// parseLimitAndUserFlags is parseProcFlags for the limits, the user and
// group, and the env.
func parseLimitAndUserFlags(e *env) ([]procEdit, error) {
	var edits []procEdit
	add := func(fn procEdit) { edits = append(edits, fn) }
	if flagIsSet(e, "memory") {
		m, err := parseMemory(flagString(e, "memory"))
		if err != nil {
			return nil, err
		}
		add(func(p *registry.ProcType) error { p.Limits.MemoryBytes = m; return nil })
	}
	if flagIsSet(e, "cpu") {
		c, err := parseCPU(flagString(e, "cpu"))
		if err != nil {
			return nil, err
		}
		add(func(p *registry.ProcType) error { p.Limits.CPUMillis = c; return nil })
	}
	if flagIsSet(e, "pids") {
		n := flagValue[int](e, "pids")
		if n < 0 {
			return nil, usageError("--pids %d: must not be negative", n)
		}
		add(func(p *registry.ProcType) error { p.Limits.Pids = n; return nil })
	}
	if flagIsSet(e, "user") {
		user := flagString(e, "user")
		add(func(p *registry.ProcType) error { p.User = user; return nil })
	}
	if flagIsSet(e, "group") {
		group := flagString(e, "group")
		add(func(p *registry.ProcType) error { p.Group = group; return nil })
	}
	if flagIsSet(e, "user") || flagIsSet(e, "group") {
		// The supervisor refuses a group without a user (the process
		// would still run as the agent's uid); say so now, not at start.
		add(func(p *registry.ProcType) error {
			if p.Group != "" && p.User == "" {
				return usageError("--group %q without a user: set --user too (a group alone would still run as the agent's user, root)", p.Group)
			}
			return nil
		})
	}
	if flagIsSet(e, "env") {
		vars, err := parseKeyValues(flagValue[[]string](e, "env"), "--env")
		if err != nil {
			return nil, err
		}
		add(func(p *registry.ProcType) error {
			if p.Env == nil {
				p.Env = make(map[string]string, len(vars))
			}
			for k, v := range vars {
				p.Env[k] = v
			}
			return nil
		})
	}
	return edits, nil
}

// parseHealthFlags checks the health flags and returns the change they
// make, or nil when none is given. Whether a health check exists to change
// is known only from the stored process type, so that is checked when the
// change is applied.
func parseHealthFlags(e *env) (procEdit, error) {
	given := false
	for _, n := range []string{"health-type", "health-cmd", "health-path", "health-period", "health-timeout", "health-threshold"} {
		given = given || flagIsSet(e, n)
	}
	if !given {
		return nil, nil
	}
	var typ registry.CheckType
	if flagIsSet(e, "health-type") {
		switch typ = registry.CheckType(flagString(e, "health-type")); {
		case typ == "none":
			return func(p *registry.ProcType) error { p.Health = nil; return nil }, nil
		case !typ.Valid():
			return nil, usageError("--health-type %q: want exec, tcp, http or none", typ)
		}
	}
	var cmd []string
	if flagIsSet(e, "health-cmd") {
		cmd = []string{"/bin/sh", "-c", flagString(e, "health-cmd")}
	}
	path := ""
	if flagIsSet(e, "health-path") {
		path = flagString(e, "health-path")
		if !strings.HasPrefix(path, "/") {
			return nil, usageError("--health-path %q: want a path starting with /", path)
		}
	}
	durations := map[string]time.Duration{}
	for _, name := range []string{"health-period", "health-timeout"} {
		if flagIsSet(e, name) {
			v := flagValue[time.Duration](e, name)
			if v <= 0 {
				return nil, usageError("--%s %s: must be positive", name, v)
			}
			durations[name] = v
		}
	}
	threshold := 0
	if flagIsSet(e, "health-threshold") {
		threshold = flagValue[int](e, "health-threshold")
		if threshold < 1 {
			return nil, usageError("--health-threshold %d: must be at least 1", threshold)
		}
	}
	return func(p *registry.ProcType) error {
		if typ != "" {
			if p.Health == nil {
				p.Health = &registry.HealthCheck{}
			}
			p.Health.Type = typ
		}
		if p.Health == nil {
			return usageError("health flags need --health-type exec, tcp or http")
		}
		h := p.Health
		if cmd != nil {
			h.Command = cmd
		}
		if path != "" {
			h.Path = path
		}
		if v, ok := durations["health-period"]; ok {
			h.Period = registry.Duration(v)
		}
		if v, ok := durations["health-timeout"]; ok {
			h.Timeout = registry.Duration(v)
		}
		if threshold != 0 {
			h.FailureThreshold = threshold
		}
		if h.Type == registry.CheckExec && len(h.Command) == 0 {
			return usageError("--health-type exec needs --health-cmd")
		}
		return nil
	}, nil
}

func runProcSet(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, 2, "APP PROC"); err != nil {
		return err
	}
	app, name := args[0], args[1]
	edits, err := parseProcFlags(e)
	if err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		p, err := r.ProcType(ctx, app, name)
		switch {
		case errors.Is(err, registry.ErrNotFound):
			// New process type; SetProcType reports an unknown app.
			p = registry.ProcType{App: app, Name: name}
		case err != nil:
			return fmt.Errorf("set proc type %s/%s: %w", app, name, err)
		}
		for _, edit := range edits {
			if err := edit(&p); err != nil {
				return err
			}
		}
		p, err = r.SetProcType(ctx, p)
		if err != nil {
			return fmt.Errorf("set proc type %s/%s: %w", app, name, err)
		}
		noteReleased(ctx, e, r, app, "the process type")
		return e.print(newProcOut(p), func(w io.Writer) {
			fmt.Fprintf(w, "set proc type %s/%s\n", p.App, p.Name)
		})
	})
}

func runProcList(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		procs, err := r.ProcTypes(ctx, args[0])
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("list proc types of app %q: %w", args[0], err)
		}
		out := make([]procOut, 0, len(procs))
		for _, p := range procs {
			out = append(out, newProcOut(p))
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		return e.print(out, func(w io.Writer) {
			fmt.Fprintln(w, "PROC\tCOMMAND\tRESTART\tSTOP\tHEALTH\tLIMITS")
			for _, p := range out {
				health := "-"
				if p.Health != nil {
					health = p.Health.Type
				}
				cmd := p.Command
				if cmd == "" {
					cmd = "(Procfile)"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s/%s\t%s\t%s\n", p.Name, cmd, p.Restart.Policy,
					p.StopSignal, p.StopTimeout, health, p.Limits.String())
			}
		})
	})
}

func runProcDelete(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, 2, "APP PROC"); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		if err := r.RemoveProcType(ctx, args[0], args[1]); err != nil {
			return fmt.Errorf("delete proc type %s/%s: %w", args[0], args[1], err)
		}
		return e.print(map[string]string{"app": args[0], "deleted": args[1]}, func(w io.Writer) {
			fmt.Fprintf(w, "deleted proc type %s/%s\n", args[0], args[1])
		})
	})
}
