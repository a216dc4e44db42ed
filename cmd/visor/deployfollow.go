package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/visorhq/visor/registry"
)

// followDeployment shows deployment id of app (through show) as it is
// now, then again after every registry change of the app, until the
// deployment reaches a terminal state, which it returns. It follows a
// registry watch from revision from+1 (read before the deployment was
// read or created), so no change is missed; it never polls. A burst of
// changes is shown once. timeout > 0 bounds the wait (a waitTimeout
// error, exit code 3).
func followDeployment(ctx context.Context, e *env, r *registry.Registry, app, id string, from int64, timeout time.Duration, show func(deployOut)) (deployOut, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var expire <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expire = t.C
	}
	events := r.WatchEvents(ctx, from+1)
	defer drain(cancel, events)
	var last deployOut
	for {
		out, err := readDeployByID(ctx, e, r, app, id)
		if err != nil {
			return out, err
		}
		show(out)
		last = out
		if registry.DeployState(out.State).Terminal() {
			return out, nil
		}
		if err := nextChange(ctx, events, app, expire); err != nil {
			if errors.Is(err, errWaitTimeout) {
				return last, waitTimeout("deployment %s of %s to %s: timed out after %s, %s: %s", id, app, last.Rev, timeout, stateText(last.State), progressSummary(last))
			}
			return last, err
		}
	}
}

// nextChange waits for a registry event about app (or a deployment
// record, whose event may not name the app), then takes whatever else is
// already queued, so a burst is one change.
func nextChange(ctx context.Context, events <-chan registry.Event, app string, expire <-chan time.Time) error {
	for {
		select {
		case <-expire:
			return errWaitTimeout
		case ev, ok := <-events:
			if !ok {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("follow deployment: %w", err)
				}
				return errors.New("follow deployment: registry watch ended")
			}
			if !concerns(ev, app) {
				continue
			}
			for {
				select {
				case <-events:
				default:
					return nil
				}
			}
		}
	}
}

// concerns reports whether ev may change what a deployment of app shows.
func concerns(ev registry.Event, app string) bool {
	return ev.App == app || strings.Contains(ev.Key, "/deploys/"+app+"/") || strings.HasSuffix(ev.Key, "/deploying/"+app)
}

// readDeployByID reads deployment id of app with the app's instances and
// scale: the current deployment if it is id, else id from the history.
func readDeployByID(ctx context.Context, e *env, r *registry.Registry, app, id string) (deployOut, error) {
	out, d, err := readDeployOut(ctx, e, r, app)
	if err != nil || d.ID == id || id == "" {
		return out, err
	}
	ds, err := r.Deployments(ctx, app)
	if err := e.skipped(err); err != nil {
		return out, fmt.Errorf("deployment %s of app %q: %w", id, app, err)
	}
	for _, h := range ds {
		if h.ID == id {
			insts, _ := r.AppInstances(ctx, app)
			scales, _ := r.Scales(ctx, app)
			return newDeployOut(h, insts, scales), nil
		}
	}
	return out, fmt.Errorf("deployment %s of app %q: %w", id, app, registry.ErrNotFound)
}

// progressSummary is "web 8/12 healthy, worker 2/2 healthy".
func progressSummary(d deployOut) string {
	parts := make([]string, 0, len(d.Procs))
	for _, p := range d.Procs {
		parts = append(parts, fmt.Sprintf("%s %d/%d healthy", p.Proc, p.Progress.Healthy, p.Count))
	}
	return strings.Join(parts, ", ")
}
