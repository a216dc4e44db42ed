package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newDrainCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "drain HOST",
		Short: "move a host's instances elsewhere and stop claiming work there",
		Long: `drain marks HOST as draining. Its agent stops claiming start tickets; the
elected reconciler starts a replacement of each of its instances on another
host and stops the old one once the replacement runs (or once --deadline
passes). Draining an unknown host, or the last host that is not draining, is
refused. 'visor host undrain HOST' ends the drain; 'visor host list -w' shows it.`,
		RunE: runWith(e, runDrain),
	}
	cmd.Flags().Duration("deadline", 0, "stop old instances after this long even if their replacements are not running (0: wait)")
	return cmd
}

func newUndrainCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "undrain HOST",
		Short: "end a host's drain: it claims work again",
		RunE:  runWith(e, runUndrain),
	}
}

func runDrain(ctx context.Context, e *env, args []string) error {
	if len(args) != 1 {
		return usageError("drain: want exactly one HOST")
	}
	deadline := flagValue[time.Duration](e, "deadline")
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		d, err := r.Drain(ctx, args[0], deadline)
		if err != nil {
			return err
		}
		return e.print(newDrainOut(d), func(w io.Writer) {
			fmt.Fprintf(w, "draining %s since %s", d.Host, d.Since.Format(time.RFC3339))
			if !d.Deadline.IsZero() {
				fmt.Fprintf(w, ", deadline %s", d.Deadline.Format(time.RFC3339))
			}
			fmt.Fprintln(w)
		})
	})
}

func runUndrain(ctx context.Context, e *env, args []string) error {
	if len(args) != 1 {
		return usageError("undrain: want exactly one HOST")
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		if err := r.Undrain(ctx, args[0]); err != nil {
			return err
		}
		return e.print(map[string]string{"host": args[0], "state": "undrained"}, func(w io.Writer) {
			fmt.Fprintf(w, "%s undrained\n", args[0])
		})
	})
}

// drainOut is the CLI's JSON form of a drain. Deadline is null when the
// drain has none (omitempty does not omit a zero time.Time, which printed
// as "0001-01-01T00:00:00Z").
type drainOut struct {
	Host     string     `json:"host"`
	Since    time.Time  `json:"since"`
	Deadline *time.Time `json:"deadline"`
}

func newDrainOut(d registry.Drain) drainOut {
	out := drainOut{Host: d.Host, Since: d.Since}
	if !d.Deadline.IsZero() {
		out.Deadline = &d.Deadline
	}
	return out
}
