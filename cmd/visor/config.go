package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newConfigCmd(e *env) *cobra.Command {
	return group(&cobra.Command{Use: "config", Short: "show or set fleet-wide settings kept in the registry"},
		&cobra.Command{
			Use:   "max-scale [N]",
			Short: "show or set the most instances one process type may be scaled to",
			Long: `Without N, prints the fleet's bound on one scale (registry key
config/max_scale; default 10000). With N, sets it; 0 restores the default.
visor scale refuses a count above it, even with --force.`,
			RunE: runWith(e, runConfigMaxScale),
		},
	)
}

func runConfigMaxScale(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 1, "[N]"); err != nil {
		return err
	}
	set := -1
	if len(args) == 1 {
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 {
			return usageError("config max-scale: %q is not a count (0 restores the default %d)", args[0], registry.DefaultMaxScale)
		}
		set = n
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		if set >= 0 {
			if err := r.SetMaxScale(ctx, set); err != nil {
				return err
			}
		}
		n, err := r.MaxScale(ctx)
		if err != nil {
			return err
		}
		return e.print(map[string]int{"max_scale": n}, func(w io.Writer) {
			fmt.Fprintf(w, "max-scale %d\n", n)
		})
	})
}
