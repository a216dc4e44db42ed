package registry

import (
	"context"
	"errors"
	"fmt"
)

// stopAppInstances stops every instance of app through tickets, as the
// rest of Visor does (issue 17, item 3: a forced delete used to leave them
// running for good, nothing stopping instances of an app without records):
// each of its scales goes to 0 (pending starts are withdrawn, live
// instances get stop tickets), then any live instance no scale covers (its
// process type or revision removed) gets a stop ticket of its own. It
// returns once the tickets are written, not when the instances are gone.
func (r *Registry) stopAppInstances(ctx context.Context, app string) error {
	// A deployment would move the instances on; it ends first.
	if err := r.cancelDeployment(ctx, app, "app deleted"); err != nil {
		return fmt.Errorf("registry: stop instances of app %q: %w", app, err)
	}
	scales, err := r.Scales(ctx, app)
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("registry: stop instances of app %q: %w", app, err)
	}
	for _, s := range scales {
		if s.Desired == 0 {
			continue
		}
		if _, err := r.Scale(ctx, app, s.Rev, s.Proc, 0); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("registry: stop instances of app %q: %w", app, err)
		}
	}
	insts, err := r.AppInstances(ctx, app)
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("registry: stop instances of app %q: %w", app, err)
	}
	for _, in := range insts {
		if in.State.Terminal() || in.StopTicket != "" || in.Host == "" {
			continue
		}
		_, err := r.CreateTicket(ctx, Ticket{Op: TicketStop, Instance: in.ID})
		if err != nil && !errors.Is(err, ErrExists) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("registry: stop instances of app %q: %w", app, err)
		}
	}
	return nil
}
