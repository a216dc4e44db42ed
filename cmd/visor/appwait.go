package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/visorhq/visor/registry"
)

// waitAppStopped follows the registry from revision from+1 (read before the
// delete, so nothing is missed) until no instance of app is left that is
// not terminal, or timeout passes (a waitTimeout error naming those left).
func waitAppStopped(ctx context.Context, r *registry.Registry, app string, from int64, timeout time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	events := r.WatchEvents(ctx, from+1)
	defer drain(cancel, events)
	for {
		left, err := liveInstances(ctx, r, app)
		if err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		if len(left) == 0 {
			return nil
		}
		for changed := false; !changed; {
			select {
			case <-timer.C:
				return waitTimeout("timed out after %s waiting for %d instances to stop: %v", timeout, len(left), left)
			case ev, ok := <-events:
				if !ok {
					if err := ctx.Err(); err != nil {
						return fmt.Errorf("wait: %w", err)
					}
					return errors.New("wait: registry watch ended")
				}
				// A deleted instance's event may not name its app.
				changed = ev.Err == nil && (ev.Type == registry.InstanceDeleted ||
					ev.Type == registry.InstanceChanged && ev.App == app)
			}
		}
	}
}

// liveInstances lists the instances of app that are not terminal, as
// "ID (state on host)", sorted.
func liveInstances(ctx context.Context, r *registry.Registry, app string) ([]string, error) {
	insts, err := r.AppInstances(ctx, app)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return nil, err
	}
	var left []string
	for _, in := range insts {
		if !in.State.Terminal() {
			left = append(left, fmt.Sprintf("%s (%s on %s)", in.ID, in.State, dash(in.Host)))
		}
	}
	sort.Strings(left)
	return left, nil
}
