package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/visorhq/visor/registry"
)

func newRestartCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "restart INSTANCE [INSTANCE...]",
		Short: "restart instances in place, on the host that runs them",
		Long: `restart writes a restart ticket for each instance; its host's agent stops the
process group (the proc type's stop signal, SIGKILL after its stop timeout) and
starts it again on the same host, counting a "manual" restart. With --wait it
waits until each instance runs again, and fails if one does not (its state and
reason are shown) or if --wait-timeout passes first.`,
		RunE: runWith(e, func(ctx context.Context, e *env, args []string) error {
			return runInstanceOp(ctx, e, args, registry.TicketRestart)
		}),
	}
	instanceOpFlags(cmd.Flags())
	return cmd
}

func newStopCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stop INSTANCE [INSTANCE...]",
		Short: "stop instances (the scale is kept: replacements start elsewhere or here)",
		Long: `stop writes a stop ticket for each instance; its host's agent stops the process
group (the proc type's stop signal, SIGKILL after its stop timeout). The desired
scale does not change, so the reconciler starts a replacement for each stopped
instance, as 'nomad alloc stop' does; to run fewer instances, use 'visor scale'.
With --wait it waits until each instance has stopped, and fails if --wait-timeout
passes first.`,
		RunE: runWith(e, func(ctx context.Context, e *env, args []string) error {
			return runInstanceOp(ctx, e, args, registry.TicketStop)
		}),
	}
	instanceOpFlags(cmd.Flags())
	return cmd
}

func instanceOpFlags(fs *pflag.FlagSet) {
	fs.Bool("wait", false, "wait until each instance has restarted (restart) or stopped (stop)")
	fs.Duration("wait-timeout", 2*time.Minute, "how long --wait waits before failing (exit code 3)")
}

// instanceOpOut is one instance's line of restart and stop output.
type instanceOpOut struct {
	Instance string `json:"instance"`
	Op       string `json:"op"`
	Ticket   string `json:"ticket"`
	Host     string `json:"host"`
	// State and PID are the instance's after --wait; empty without it.
	State string `json:"state,omitempty"`
	PID   int    `json:"pid,omitempty"`
}

// instanceOp is one ticket of a restart or stop, with the instance as it
// was before and as the wait last read it.
type instanceOp struct {
	before registry.Instance
	ticket registry.Ticket
	now    registry.Instance
	done   bool // the ticket is gone: carried out, or given up
}

// finished reports whether the op's outcome is known: the instance is
// lost, or for a stop its ticket is gone (the agent writes the stopped
// state before it completes the ticket) or it has ended, or for a
// restart its ticket is gone and the instance has settled: running,
// crashed again (backoff) or no longer live. States a restart passes
// through before its ticket is done do not count.
func (o *instanceOp) finished() bool {
	if o.now.State == registry.InstanceLost {
		return true
	}
	if o.ticket.Op == registry.TicketStop {
		return o.done || o.now.State.Terminal()
	}
	if !o.done {
		return false
	}
	switch o.now.State {
	case registry.InstancePending, registry.InstanceClaimed, registry.InstanceStarting:
		return false
	}
	return true
}

// failure explains a finished op that did not reach its outcome (a
// running instance after a restart, a stopped one after a stop), or
// returns nil.
func (o *instanceOp) failure() error {
	ok := o.now.State.Terminal()
	if o.ticket.Op == registry.TicketRestart {
		ok = o.now.State == registry.InstanceRunning
	}
	if ok {
		return nil
	}
	msg := fmt.Sprintf("%s %s: instance is %s", o.ticket.Op, o.now.ID, o.now.State)
	if o.now.Reason != "" {
		msg += ": " + o.now.Reason
	}
	return errors.New(msg)
}

func runInstanceOp(ctx context.Context, e *env, args []string, op registry.TicketOp) error {
	if len(args) == 0 {
		return usageError("%s: want one or more INSTANCE ids", op)
	}
	wait := flagBool(e, "wait")
	timeout := flagValue[time.Duration](e, "wait-timeout")
	if wait && timeout <= 0 {
		return usageError("--wait-timeout %s: must be positive", timeout)
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		from, err := r.CurrentRevision(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		var ops []*instanceOp
		var errs []error
		for _, id := range args {
			in, err := r.Instance(ctx, id)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", op, id, err))
				continue
			}
			t, err := r.CreateTicket(ctx, registry.Ticket{Op: op, Instance: id})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", op, id, err))
				continue
			}
			ops = append(ops, &instanceOp{before: in, ticket: t, now: in})
		}
		if wait && len(ops) > 0 {
			if err := waitInstanceOps(ctx, r, ops, from, timeout); err != nil {
				errs = append(errs, err)
			}
		}
		out := make([]instanceOpOut, 0, len(ops))
		for _, o := range ops {
			line := instanceOpOut{Instance: o.before.ID, Op: string(op), Ticket: o.ticket.ID, Host: o.ticket.Host}
			if wait {
				line.State = string(o.now.State)
				if o.now.State.Live() {
					line.PID = o.now.PID
				}
			}
			out = append(out, line)
		}
		if err := e.print(out, func(w io.Writer) {
			for _, l := range out {
				fmt.Fprintf(w, "%s ticket %s for %s on %s", l.Op, l.Ticket, l.Instance, l.Host)
				if wait {
					fmt.Fprintf(w, ": %s", l.State)
					if l.PID != 0 {
						fmt.Fprintf(w, " (pid %d)", l.PID)
					}
				}
				fmt.Fprintln(w)
			}
		}); err != nil {
			errs = append(errs, err)
		}
		return joinErrors(errs...)
	})
}

// waitInstanceOps follows the registry from revision from+1 (read before
// the tickets were written, so nothing is missed) until every op has
// finished or timeout passes. It returns the failures, joined on one line.
func waitInstanceOps(ctx context.Context, r *registry.Registry, ops []*instanceOp, from int64, timeout time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	byTicket := make(map[string]*instanceOp, len(ops))
	byInstance := make(map[string]*instanceOp, len(ops))
	for _, o := range ops {
		byTicket[o.ticket.ID], byInstance[o.before.ID] = o, o
	}
	unfinished := func() int {
		n := 0
		for _, o := range ops {
			if !o.finished() {
				n++
			}
		}
		return n
	}
	events := r.WatchEvents(ctx, from+1)
	defer drain(cancel, events)
	for unfinished() > 0 {
		select {
		case <-timer.C:
			var late []string
			for _, o := range ops {
				if !o.finished() {
					late = append(late, fmt.Sprintf("%s (%s)", o.before.ID, o.now.State))
				}
			}
			return waitTimeout("%s: timed out after %s waiting for %v", ops[0].ticket.Op, timeout, late)
		case ev, ok := <-events:
			if !ok {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("wait: %w", err)
				}
				return errors.New("wait: registry watch ended")
			}
			if ev.Err != nil {
				continue
			}
			var o *instanceOp
			switch ev.Type {
			case registry.TicketDone:
				o = byTicket[ev.Ticket]
			case registry.InstanceChanged, registry.InstanceDeleted:
				o = byInstance[ev.Instance]
			}
			if o == nil || o.finished() {
				// A finished op keeps the state it settled in.
				continue
			}
			if ev.Type == registry.TicketDone {
				o.done = true
			}
			in, err := r.Instance(ctx, o.before.ID)
			switch {
			case errors.Is(err, registry.ErrNotFound):
				// Deleted (a terminal instance garbage-collected): stopped.
				o.now.State = registry.InstanceExited
			case err != nil:
				return fmt.Errorf("wait: %w", err)
			default:
				o.now = in
			}
		}
	}
	var errs []error
	for _, o := range ops {
		if err := o.failure(); err != nil {
			errs = append(errs, err)
		}
	}
	return joinErrors(errs...)
}
