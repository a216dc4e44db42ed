package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/visorhq/visor/registry"
)

const envSetLong = `env set writes the variables in one transaction. A revision keeps the env
it was released with (its first scale or deployment); the change reaches
revisions released afterwards, and running instances keep the environment
they were started with.

With --rollout the app's instances are restarted with the new env through
the rolling machinery of "visor deploy": the revision the app runs now is
registered again as <rev>-env<N> (the same artifact or directory, as "visor
rev register --from" does), and a deployment releases it with the app's
process types and env as they are after this change and moves every scaled
process type to it, with each process type's strategy ("visor proc set
--max-parallel ..."). Other apps are not touched. It is refused, before
anything is written, when the app runs no revision, more than one, or has
an active deployment. If the deployment cannot be created after the env was
written, the error names the new revision: "visor deploy APP REV" retries
it.`

// envRolloutRev matches a revision name that an earlier --rollout made.
var envRolloutRev = regexp.MustCompile(`^(.*)-env([0-9]+)$`)

// envRollout sets vars on app, registers a copy of the running revision
// and deploys it (see envSetLong).
func envRollout(ctx context.Context, e *env, r *registry.Registry, app string, vars map[string]string, wait bool, timeout time.Duration) error {
	running, err := runningRevision(ctx, r, app)
	if err != nil {
		return fmt.Errorf("env set --rollout %s: %w", app, err)
	}
	if d, err := r.Deployment(ctx, app); err == nil && d.Active() {
		return fmt.Errorf("env set --rollout %s: %w: %s to %s is %s; wait for it, or fail it (visor deploy fail %s)",
			app, registry.ErrDeployActive, d.ID, d.Rev, stateText(string(d.State)), app)
	} else if err != nil && !errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("env set --rollout %s: %w", app, err)
	}
	name, err := nextEnvRev(ctx, r, app, running)
	if err != nil {
		return fmt.Errorf("env set --rollout %s: %w", app, err)
	}
	from, err := r.CurrentRevision(ctx)
	if err != nil {
		return fmt.Errorf("env set --rollout %s: %w", app, err)
	}
	if err := r.SetEnv(ctx, app, vars); err != nil {
		return fmt.Errorf("set env of app %q: %w", app, err)
	}
	fmt.Fprintf(e.stderr, "visor: set %s on app %s; rolling out as revision %s (from %s)\n", strings.Join(sortedKeys(vars), " "), app, name, running)
	if _, err := r.RegisterRevisionFrom(ctx, app, name, running); err != nil {
		return fmt.Errorf("env set --rollout %s: the env is set; register revision %s: %w", app, name, err)
	}
	d, err := r.CreateDeployment(ctx, registry.DeployRequest{App: app, Rev: name, By: operator()})
	if err != nil {
		return fmt.Errorf("env set --rollout %s: the env is set and revision %s registered; deploy it (visor deploy %s %s): %w", app, name, app, name, err)
	}
	return startedDeployment(ctx, e, r, d, from, wait, timeout)
}

// runningRevision returns the one revision of app with instances desired,
// or an error naming what there is instead.
func runningRevision(ctx context.Context, r *registry.Registry, app string) (string, error) {
	if _, err := r.App(ctx, app); err != nil {
		return "", err
	}
	scales, err := r.Scales(ctx, app)
	if err != nil {
		return "", err
	}
	revs := map[string]bool{}
	for _, s := range scales {
		if s.Desired > 0 {
			revs[s.Rev] = true
		}
	}
	switch names := sortedKeys(revs); len(names) {
	case 0:
		return "", fmt.Errorf("%w: app %q runs no revision: nothing to roll out (env set without --rollout sets it for the next start)", registry.ErrInvalid, app)
	case 1:
		return names[0], nil
	default:
		return "", fmt.Errorf("%w: app %q runs %d revisions (%s): deploy one of them first (visor deploy)", registry.ErrInvalid, app, len(names), strings.Join(names, ", "))
	}
}

// nextEnvRev names the revision an env rollout of running registers:
// <base>-env<N>, where base is running without an earlier -env<N> and N
// is one more than the largest in use.
func nextEnvRev(ctx context.Context, r *registry.Registry, app, running string) (string, error) {
	base := running
	if m := envRolloutRev.FindStringSubmatch(running); m != nil {
		base = m[1]
	}
	revs, err := r.Revisions(ctx, app)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return "", err
	}
	n := 0
	for _, rv := range revs {
		if m := envRolloutRev.FindStringSubmatch(rv.Name); m != nil && m[1] == base {
			k, _ := strconv.Atoi(m[2])
			n = max(n, k)
		}
	}
	return fmt.Sprintf("%s-env%d", base, n+1), nil
}
