package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

const deployLong = `deploy moves APP's instances from the revision(s) running now to REV,
per process type (all of the app's scaled process types, or those named
with --proc), keeping each process type's total count. The deployment is a
registry record; the elected reconciler carries it out, so closing the
terminal, or losing the agent that leads, does not stop it.

Rolling: up to --max-parallel new instances start; once each has been
running and healthy (its health check passing) for --min-healthy, as many
old ones stop, and so on. A new instance that crash-loops, fails to start
on every host, or is not healthy within --healthy-deadline fails the
deployment: with --auto-revert the revision it replaced is rolled back the
same way; without, it stops where it is and nothing more is stopped.
With --canary N, N new instances start beside the old ones and the
deployment waits for "visor deploy promote APP" (or --auto-promote).

The strategy flags override, for this deployment, the process type's own
strategy ("visor proc set --max-parallel ..."), which overrides the
defaults (max-parallel 1, min-healthy 10s, healthy-deadline 5m,
progress-deadline 10m, no canary).

One deployment per app is active at a time: a second is refused unless
--force, which cancels the active one where it stands and starts this one
from there.

With --wait it follows the deployment to its end: exit 0 when it
succeeded, 1 when it failed (naming why), 3 when --wait-timeout passed
first (the deployment goes on).`

func newDeployCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "deploy APP REV",
		Short: "roll an app's instances over to a revision; status, pause, resume, fail, promote",
		Long:  deployLong,
		Args:  cobra.ArbitraryArgs,
		RunE:  runWith(e, runDeploy),
	}
	fs := cmd.Flags()
	fs.StringSlice("proc", nil, "process type to deploy (repeatable; default all the app's scaled process types)")
	strategyFlags(fs)
	fs.Bool("force", false, "replace the app's active deployment (it is cancelled where it stands)")
	fs.Bool("wait", false, "follow the deployment until it ends: exit 0 succeeded, 1 failed, 3 timed out")
	fs.Duration("wait-timeout", 30*time.Minute, "how long --wait waits before failing (exit code 3)")
	status := &cobra.Command{
		Use:   "status APP",
		Short: "show the progress of the app's active (else latest) deployment",
		Long: `status shows, per process type, the old and new revisions' instances:
desired (their scale), placed (on a host), healthy (running, past the health
check) and unhealthy (backoff or failed), and the driver's progress (new
instances healthy for min-healthy, of the count), with a progress bar when
stdout is a terminal. With -w it follows the deployment through a registry
watch until it ends: exit 0 when it succeeded, 1 when it failed.`,
		RunE: runWith(e, runDeployStatus),
	}
	status.Flags().BoolP("watch", "w", false, "follow the deployment until it ends")
	cmd.AddCommand(status,
		deployActionCmd(e, registry.DeployPause, "pause the rollout: nothing more starts or stops until resume"),
		deployActionCmd(e, registry.DeployResume, "resume a paused rollout"),
		deployActionCmd(e, registry.DeployFail, "fail the deployment (canaries are stopped; with auto-revert, roll back)"),
		deployActionCmd(e, registry.DeployPromote, "promote the canaries: roll out the rest"),
	)
	return cmd
}

func deployActionCmd(e *env, a registry.DeployAction, short string) *cobra.Command {
	return &cobra.Command{
		Use:   string(a) + " APP",
		Short: short,
		RunE: runWith(e, func(ctx context.Context, e *env, args []string) error {
			return runDeployAction(ctx, e, a, args)
		}),
	}
}

func newDeploysCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "deploys APP",
		Short: "list an app's deployments, oldest first: who, when, from and to, outcome",
		RunE:  runWith(e, runDeploys),
	}
}

func newRollbackCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollback APP [REV]",
		Short: "deploy the previous revision (or REV) again, as a rolling deployment",
		Long: `rollback is a deployment back to the revision the app ran before its
latest deployment, or to REV, with the same rolling strategy and the same
--wait as "visor deploy".`,
		RunE: runWith(e, runRollback),
	}
	cmd.Flags().Bool("wait", false, "follow the rollback until it ends: exit 0 succeeded, 1 failed, 3 timed out")
	cmd.Flags().Duration("wait-timeout", 30*time.Minute, "how long --wait waits before failing (exit code 3)")
	return cmd
}

// waitFlags reads --wait and --wait-timeout.
func waitFlags(e *env) (bool, time.Duration, error) {
	wait := flagBool(e, "wait")
	timeout := flagValue[time.Duration](e, "wait-timeout")
	if wait && timeout <= 0 {
		return false, 0, usageError("--wait-timeout %s: must be positive", timeout)
	}
	return wait, timeout, nil
}

func runDeploy(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, 2, "APP REV"); err != nil {
		return err
	}
	app, rev := args[0], args[1]
	override, err := strategyFromFlags(e)
	if err != nil {
		return err
	}
	procs, err := e.flags.GetStringSlice("proc")
	if err != nil {
		return err
	}
	for _, p := range procs {
		if p == "" {
			return usageError("--proc: empty process type name")
		}
	}
	wait, timeout, err := waitFlags(e)
	if err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		from, err := r.CurrentRevision(ctx)
		if err != nil {
			return fmt.Errorf("deploy %s %s: %w", app, rev, err)
		}
		d, err := r.CreateDeployment(ctx, registry.DeployRequest{
			App: app, Rev: rev, Procs: procs, Override: override, Force: flagBool(e, "force"), By: operator(),
		})
		if err != nil {
			if errors.Is(err, registry.ErrDeployActive) {
				return fmt.Errorf("deploy %s %s: %w (--force replaces the active deployment)", app, rev, err)
			}
			return fmt.Errorf("deploy %s %s: %w", app, rev, err)
		}
		return startedDeployment(ctx, e, r, d, from, wait, timeout)
	})
}

// startedDeployment reports a deployment just created, and with wait
// follows it to its end.
func startedDeployment(ctx context.Context, e *env, r *registry.Registry, d registry.Deployment, from int64, wait bool, timeout time.Duration) error {
	out := newDeployOut(d, nil, nil)
	if !wait {
		return e.print(out, func(w io.Writer) { fmt.Fprintln(w, deploySummary(out)) })
	}
	if asJSON, _ := e.jsonOutput(); !asJSON {
		fmt.Fprintln(e.stdout, deploySummary(out))
	}
	final, err := followDeployment(ctx, e, r, d.App, d.ID, from, timeout, progressPrinter(e))
	if err != nil {
		return err
	}
	if asJSON, _ := e.jsonOutput(); asJSON {
		if err := e.print(final, nil); err != nil {
			return err
		}
	}
	return deployOutcome(final)
}

// deploySummary is the line that reports a new deployment.
func deploySummary(d deployOut) string {
	parts := make([]string, 0, len(d.Procs))
	for _, p := range d.Procs {
		from := make([]string, 0, len(p.From))
		for _, rev := range sortedKeys(p.From) {
			from = append(from, fmt.Sprintf("%s=%d", rev, p.From[rev]))
		}
		parts = append(parts, fmt.Sprintf("%s %d (from %s)", p.Proc, p.Count, dash(strings.Join(from, " "))))
	}
	verb := "deploying"
	if d.RevertOf != "" {
		verb = "rolling back"
	}
	return fmt.Sprintf("%s: %s %s to %s: %s", d.ID, verb, d.App, d.Rev, strings.Join(parts, ", "))
}

// deployOutcome is nil for a deployment that succeeded, else the failure
// (exit 1) naming its state and reason.
func deployOutcome(d deployOut) error {
	if d.State == string(registry.DeploySucceeded) {
		return nil
	}
	why := d.Reason
	if why == "" {
		why = "no reason recorded"
	}
	return fmt.Errorf("deployment %s of %s to %s %s: %s: %w", d.ID, d.App, d.Rev, stateText(d.State), why, errWaitFailed)
}

// progressPrinter returns the printer of --wait: one line per process
// type whenever its numbers change (nothing with -o json).
func progressPrinter(e *env) func(deployOut) {
	if asJSON, _ := e.jsonOutput(); asJSON {
		return func(deployOut) {}
	}
	last := map[string]string{}
	return func(d deployOut) {
		for _, p := range d.Procs {
			line := fmt.Sprintf("%s/%s: %s: new %d/%d healthy, %d placed, %d unhealthy; old %d healthy, %d desired",
				d.App, p.Proc, stateText(d.State), p.Progress.Healthy, p.Count, p.New.Placed, p.New.Unhealthy, p.Old.Healthy, p.Old.Desired)
			if last[p.Proc] != line {
				fmt.Fprintln(e.stdout, line)
				last[p.Proc] = line
			}
		}
	}
}

func runDeployStatus(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	app := args[0]
	watch := flagBool(e, "watch")
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		from, err := r.CurrentRevision(ctx)
		if err != nil {
			return fmt.Errorf("deploy status %s: %w", app, err)
		}
		out, d, err := readDeployOut(ctx, e, r, app)
		if err != nil {
			return err
		}
		bar := isTerminal(e.stdout)
		var last string
		show := func(o deployOut) {
			// -w shows a deployment again only when something but its
			// update time changed.
			key := o
			key.Updated = time.Time{}
			k := fmt.Sprintf("%+v", key)
			if k == last {
				return
			}
			if last != "" {
				fmt.Fprintln(e.stdout)
			}
			last = k
			_ = e.print(o, func(w io.Writer) { writeDeployStatus(w, o, bar) })
		}
		if !watch {
			show(out)
			return nil
		}
		final, err := followDeployment(ctx, e, r, app, d.ID, from, 0, show)
		if err != nil {
			return err
		}
		return deployOutcome(final)
	})
}

func runDeployAction(ctx context.Context, e *env, a registry.DeployAction, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	app := args[0]
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		d, err := r.DeploymentAction(ctx, app, a)
		if err != nil {
			return fmt.Errorf("deploy %s %s: %w", a, app, err)
		}
		out := newDeployOut(d, nil, nil)
		return e.print(out, func(w io.Writer) {
			fmt.Fprintf(w, "%s: %s %s to %s: %s\n", d.ID, a, d.App, d.Rev, stateText(string(d.State)))
		})
	})
}

func runDeploys(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	app := args[0]
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		if _, err := r.App(ctx, app); err != nil {
			return fmt.Errorf("deploys %s: %w", app, err)
		}
		ds, err := r.Deployments(ctx, app)
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("deploys %s: %w", app, err)
		}
		sortHistory(ds)
		out := make([]historyOut, 0, len(ds))
		for _, d := range ds {
			out = append(out, newHistoryOut(d))
		}
		return e.print(out, func(w io.Writer) { writeHistory(w, out) })
	})
}

func runRollback(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 2, "APP [REV]"); err != nil {
		return err
	}
	app, rev := args[0], ""
	if len(args) == 2 {
		rev = args[1]
	}
	wait, timeout, err := waitFlags(e)
	if err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		from, err := r.CurrentRevision(ctx)
		if err != nil {
			return fmt.Errorf("rollback %s: %w", app, err)
		}
		d, err := r.Rollback(ctx, app, rev, operator())
		if err != nil {
			return fmt.Errorf("rollback %s: %w", app, err)
		}
		return startedDeployment(ctx, e, r, d, from, wait, timeout)
	})
}
