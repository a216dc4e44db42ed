package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newAppCmd(e *env) *cobra.Command {
	create := &cobra.Command{
		Use:   "create APP",
		Short: "register a new app",
		RunE:  runWith(e, runAppCreate),
	}
	create.Flags().String("repo", "", "source repository URL of the app")
	create.Flags().String("stack", "", "stack (runtime) the app is built for")
	del := &cobra.Command{
		Use:   "delete APP",
		Short: "delete an app with its env, revisions, process types and scale",
		Long: `An app with live instances is refused unless --force is given; --force
first stops them through stop tickets (every scale to 0), then removes the
app's registry records; the agents stop the processes. With --wait it waits
until no instance of the app is left running, and fails if --wait-timeout
passes first (exit code 3), naming those still there.`,
		RunE: runWith(e, runAppDelete),
	}
	del.Flags().Bool("force", false, "stop the app's live instances, then delete it")
	del.Flags().Bool("wait", false, "wait until the app's instances have stopped")
	del.Flags().Duration("wait-timeout", 2*time.Minute, "how long --wait waits before failing (exit code 3)")
	return group(&cobra.Command{Use: "app", Short: "create, list, show and delete apps"},
		create,
		&cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "list apps", RunE: runWith(e, runAppList)},
		&cobra.Command{Use: "show APP", Short: "show an app with its env, revisions, process types and scale", RunE: runWith(e, runAppShow)},
		del,
	)
}

// appOut is the CLI's JSON form of an app; field names are part of the CLI's
// stable output.
type appOut struct {
	Name    string    `json:"name"`
	RepoURL string    `json:"repo_url,omitempty"`
	Stack   string    `json:"stack,omitempty"`
	Created time.Time `json:"created"`
}

func newAppOut(a registry.App) appOut {
	return appOut{Name: a.Name, RepoURL: a.RepoURL, Stack: a.Stack, Created: a.Created}
}

// appShowOut is the JSON form of `visor app show`.
type appShowOut struct {
	appOut
	Env       map[string]string `json:"env"`
	Revisions []revOut          `json:"revisions"`
	ProcTypes []procOut         `json:"proc_types"`
	Scale     []scaleEntryOut   `json:"scale"`
}

// scaleEntryOut is one desired-scale record.
type scaleEntryOut struct {
	Rev     string `json:"rev"`
	Proc    string `json:"proc"`
	Desired int    `json:"desired"`
}

func runAppCreate(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		a, err := r.RegisterApp(ctx, registry.App{
			Name:    args[0],
			RepoURL: flagString(e, "repo"),
			Stack:   flagString(e, "stack"),
		})
		if err != nil {
			return fmt.Errorf("create app %q: %w", args[0], err)
		}
		return e.print(newAppOut(a), func(w io.Writer) {
			fmt.Fprintf(w, "created app %s\n", a.Name)
		})
	})
}

func runAppList(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 0, ""); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		apps, err := r.Apps(ctx)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("list apps: %w", err)
		}
		sort.Slice(apps, func(i, j int) bool { return apps[i].Name < apps[j].Name })
		out := make([]appOut, 0, len(apps))
		for _, a := range apps {
			out = append(out, newAppOut(a))
		}
		return e.print(out, func(w io.Writer) {
			fmt.Fprintln(w, "NAME\tREPO\tSTACK\tCREATED")
			for _, a := range out {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", a.Name, dash(a.RepoURL), dash(a.Stack), ago(a.Created))
			}
		})
	})
}

func runAppShow(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	name := args[0]
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		a, err := r.App(ctx, name)
		if err != nil {
			return fmt.Errorf("show app %q: %w", name, err)
		}
		envs, err := r.Env(ctx, name)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("show app %q: env: %w", name, err)
		}
		revs, err := r.Revisions(ctx, name)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("show app %q: revisions: %w", name, err)
		}
		procs, err := r.ProcTypes(ctx, name)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("show app %q: proc types: %w", name, err)
		}
		scales, err := r.Scales(ctx, name)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("show app %q: scale: %w", name, err)
		}
		out := appShowOut{
			appOut:    newAppOut(a),
			Env:       envs,
			Revisions: make([]revOut, 0, len(revs)),
			ProcTypes: make([]procOut, 0, len(procs)),
			Scale:     make([]scaleEntryOut, 0, len(scales)),
		}
		if out.Env == nil {
			out.Env = map[string]string{}
		}
		for _, v := range revs {
			out.Revisions = append(out.Revisions, newRevOut(v))
		}
		for _, p := range procs {
			out.ProcTypes = append(out.ProcTypes, newProcOut(p))
		}
		for _, s := range scales {
			out.Scale = append(out.Scale, scaleEntryOut{Rev: s.Rev, Proc: s.Proc, Desired: s.Desired})
		}
		sort.Slice(out.Scale, func(i, j int) bool {
			if out.Scale[i].Rev != out.Scale[j].Rev {
				return out.Scale[i].Rev < out.Scale[j].Rev
			}
			return out.Scale[i].Proc < out.Scale[j].Proc
		})
		return e.print(out, func(w io.Writer) {
			fmt.Fprintf(w, "Name:\t%s\n", out.Name)
			fmt.Fprintf(w, "Repo:\t%s\n", dash(out.RepoURL))
			fmt.Fprintf(w, "Stack:\t%s\n", dash(out.Stack))
			fmt.Fprintf(w, "Created:\t%s\n", out.Created.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "Env:\t%s\n", strings.Join(sortedKeys(out.Env), " "))
			names := make([]string, 0, len(out.Revisions))
			for _, v := range out.Revisions {
				names = append(names, v.Name)
			}
			fmt.Fprintf(w, "Revisions:\t%s\n", dash(strings.Join(names, " ")))
			names = names[:0]
			for _, p := range out.ProcTypes {
				names = append(names, p.Name)
			}
			fmt.Fprintf(w, "Proc types:\t%s\n", dash(strings.Join(names, " ")))
			names = names[:0]
			for _, s := range out.Scale {
				names = append(names, fmt.Sprintf("%s/%s=%d", s.Rev, s.Proc, s.Desired))
			}
			fmt.Fprintf(w, "Scale:\t%s\n", dash(strings.Join(names, " ")))
		})
	})
}

func runAppDelete(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	force, wait := flagBool(e, "force"), flagBool(e, "wait")
	timeout := flagValue[time.Duration](e, "wait-timeout")
	if wait && timeout <= 0 {
		return usageError("--wait-timeout %s: must be positive", timeout)
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		from, err := r.CurrentRevision(ctx)
		if err != nil {
			return fmt.Errorf("delete app %q: %w", args[0], err)
		}
		if err := r.UnregisterApp(ctx, args[0], force); err != nil {
			if errors.Is(err, registry.ErrInUse) {
				return fmt.Errorf("delete app %q: %w (use --force to delete anyway)", args[0], err)
			}
			return fmt.Errorf("delete app %q: %w", args[0], err)
		}
		if wait {
			if err := waitAppStopped(ctx, r, args[0], from, timeout); err != nil {
				return fmt.Errorf("delete app %q: %w", args[0], err)
			}
		}
		return e.print(map[string]string{"deleted": args[0]}, func(w io.Writer) {
			fmt.Fprintf(w, "deleted app %s\n", args[0])
		})
	})
}

// The helpers below are shared by every registry command.

// withRegistry checks the output format, dials the registry, runs fn and
// closes the registry. Registry input errors (ErrInvalid) become usage
// errors, so bad input exits with 2 like a bad flag.
func withRegistry(ctx context.Context, e *env, fn func(ctx context.Context, r *registry.Registry) error) error {
	if _, err := e.jsonOutput(); err != nil {
		return err
	}
	r, err := e.registry(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	rctx, cancel := e.requestContext(ctx)
	defer cancel()
	err = fn(rctx, r)
	if errors.Is(err, registry.ErrInvalid) {
		return asUsage(err)
	}
	return err
}

// wantArgs checks the number of positional arguments; max < 0 means no limit.
func wantArgs(args []string, min, max int, names string) error {
	switch {
	case len(args) < min:
		return usageError("missing argument: want %s", names)
	case max >= 0 && len(args) > max:
		if max == 0 {
			return usageError("unexpected argument %q", args[max])
		}
		return usageError("unexpected argument %q: want %s", args[max], names)
	}
	return nil
}

// flagString returns the value of the running command's flag name.
func flagString(e *env, name string) string {
	return e.flags.Lookup(name).Value.String()
}

// flagBool returns the value of the running command's boolean flag name.
func flagBool(e *env, name string) bool {
	v, err := e.flags.GetBool(name)
	if err != nil {
		panic(err) // the command declares its flags
	}
	return v
}

// flagValue returns the typed value of the running command's flag name.
func flagValue[T any](e *env, name string) T {
	var v any
	var err error
	switch any(*new(T)).(type) {
	case int:
		v, err = e.flags.GetInt(name)
	case int64:
		v, err = e.flags.GetInt64(name)
	case time.Duration:
		v, err = e.flags.GetDuration(name)
	default: // a flag.Getter, such as kvFlag
		v = e.flags.Lookup(name).Value.(interface{ Get() any }).Get()
	}
	if err != nil {
		panic(err) // the command declares its flags
	}
	return v.(T)
}

// flagIsSet reports whether the flag name was given on the command line.
func flagIsSet(e *env, name string) bool {
	return e.flags.Changed(name)
}

// dash returns s, or "-" for an empty s, for table cells.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ago formats the time since t for tables ("12s", "3m", "5h", "2d").
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
