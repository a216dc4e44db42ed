package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newEnvCmd(e *env) *cobra.Command {
	set := &cobra.Command{
		Use:   "set APP KEY=VALUE [KEY=VALUE...]",
		Short: "set environment variables of an app (one transaction)",
		Long:  envSetLong,
		RunE:  runWith(e, runEnvSet),
	}
	set.Flags().Bool("rollout", false, "then restart the app's instances with it, as a rolling deployment of a new revision")
	set.Flags().Bool("wait", false, "with --rollout: follow the deployment until it ends (exit 0 succeeded, 1 failed, 3 timed out)")
	set.Flags().Duration("wait-timeout", 30*time.Minute, "how long --wait waits before failing (exit code 3)")
	return group(&cobra.Command{
		Use:   "env",
		Short: "set, unset and list an app's environment variables",
		Long: `Env changes apply to the app's next release: a revision scaled for the first
time takes the app's env of that moment and keeps it (visor rev show APP REV
lists its env keys). Released revisions, and their running instances, keep
theirs; register a new revision (visor rev register APP NEWREV --from REV) and
scale it to ship a change.`,
	},
		set,
		&cobra.Command{Use: "unset APP KEY [KEY...]", Short: "remove environment variables of an app", RunE: runWith(e, runEnvUnset)},
		&cobra.Command{Use: "list APP", Aliases: []string{"ls"}, Short: "list an app's environment variables", RunE: runWith(e, runEnvList)},
	)
}

// parseKeyValues parses KEY=VALUE arguments; what names the arguments in
// errors. A repeated key is an error, so that no assignment is silently lost.
func parseKeyValues(args []string, what string) (map[string]string, error) {
	vars := make(map[string]string, len(args))
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usageError("%s %q: want KEY=VALUE", what, a)
		}
		if _, dup := vars[k]; dup {
			return nil, usageError("%s %q: %s given twice", what, a, k)
		}
		vars[k] = v
	}
	return vars, nil
}

func runEnvSet(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, -1, "APP KEY=VALUE..."); err != nil {
		return err
	}
	app := args[0]
	vars, err := parseKeyValues(args[1:], "env")
	if err != nil {
		return err
	}
	rollout := flagBool(e, "rollout")
	wait, timeout, err := waitFlags(e)
	if err != nil {
		return err
	}
	if wait && !rollout {
		return usageError("--wait: only with --rollout (env set alone restarts nothing)")
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		if rollout {
			return envRollout(ctx, e, r, app, vars, wait, timeout)
		}
		if err := r.SetEnv(ctx, app, vars); err != nil {
			return fmt.Errorf("set env of app %q: %w", app, err)
		}
		noteReleased(ctx, e, r, app, "the env change")
		keys := sortedKeys(vars)
		return e.print(map[string]any{"app": app, "set": keys}, func(w io.Writer) {
			fmt.Fprintf(w, "set %s on app %s\n", strings.Join(keys, " "), app)
		})
	})
}

func runEnvUnset(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, -1, "APP KEY..."); err != nil {
		return err
	}
	app, keys := args[0], args[1:]
	for _, k := range keys {
		if strings.Contains(k, "=") {
			return usageError("env unset: %q: want a KEY, not KEY=VALUE", k)
		}
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		if err := r.UnsetEnv(ctx, app, keys...); err != nil {
			return fmt.Errorf("unset env of app %q: %w", app, err)
		}
		noteReleased(ctx, e, r, app, "the env change")
		return e.print(map[string]any{"app": app, "unset": keys}, func(w io.Writer) {
			fmt.Fprintf(w, "unset %s on app %s\n", strings.Join(keys, " "), app)
		})
	})
}

func runEnvList(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	app := args[0]
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		vars, err := r.Env(ctx, app)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("list env of app %q: %w", app, err)
		}
		if vars == nil {
			vars = map[string]string{}
		}
		return e.print(vars, func(w io.Writer) {
			fmt.Fprintln(w, "KEY\tVALUE")
			for _, k := range sortedKeys(vars) {
				fmt.Fprintf(w, "%s\t%s\n", k, vars[k])
			}
		})
	})
}
