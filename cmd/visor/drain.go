package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/visorhq/visor/registry"
)

func init() {
	register(&command{
		Name:  "drain",
		Args:  "HOST",
		Short: "move a host's instances elsewhere and stop claiming work there",
		Long: `drain marks HOST as draining. Its agent stops claiming start tickets; the
elected reconciler starts a replacement of each of its instances on another
host and stops the old one once the replacement runs (or once --deadline
passes). Draining an unknown host, or the last host that is not draining, is
refused. 'visor undrain HOST' ends the drain; 'visor hosts -w' shows it.`,
		Flags: func(fs *flag.FlagSet) {
			fs.Duration("deadline", 0, "stop old instances after this long even if their replacements are not running (0: wait)")
		},
		Run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return usageError("drain: want exactly one HOST")
			}
			deadline := flagValue[time.Duration](e, "deadline")
			return withRegistry(ctx, e, func(r *registry.Registry) error {
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
		},
	})
	register(&command{
		Name:  "undrain",
		Args:  "HOST",
		Short: "end a host's drain: it claims work again",
		Run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return usageError("undrain: want exactly one HOST")
			}
			return withRegistry(ctx, e, func(r *registry.Registry) error {
				if err := r.Undrain(ctx, args[0]); err != nil {
					return err
				}
				return e.print(map[string]string{"host": args[0], "state": "undrained"}, func(w io.Writer) {
					fmt.Fprintf(w, "%s undrained\n", args[0])
				})
			})
		},
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
