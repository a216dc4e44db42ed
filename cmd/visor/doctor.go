package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/discovery"
	"github.com/visorhq/visor/registry"
)

func newDoctorCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "list registry records that do not decode (exit 1 if any)",
		Long: `doctor reads every record under the prefix and lists those that do not
decode or fail validation (a value written into etcd by hand, by a broken
client or by someone with write access to the prefix), service endpoints
included: its key, its kind and what is wrong. Agents and listings skip such records and say so; doctor
names them all. It exits 0 when there are none and 1 when there are. A bad
record is removed with etcdctl del KEY (or fixed by the command that writes
it, e.g. visor env set). On stderr it also names the unreleased (draft)
revisions that have live instances: revisions registered by an older Visor,
which start from the app's current process types and env until their next
visor scale releases them.`,
		RunE: runWith(e, runDoctor),
	}
}

// badRecordOut is the CLI's JSON form of a record that does not decode.
type badRecordOut struct {
	Key   string `json:"key"`
	Kind  string `json:"kind"`
	Error string `json:"error"`
}

func runDoctor(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 0, 0, ""); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		bad, err := r.Check(ctx)
		if err != nil {
			return fmt.Errorf("doctor: %w", err)
		}
		eps, err := discovery.NewStore(r.Client(), r.Prefix(), nil).Check(ctx)
		if err != nil {
			return fmt.Errorf("doctor: %w", err)
		}
		out := make([]badRecordOut, 0, len(bad)+len(eps))
		for _, b := range bad {
			out = append(out, badRecordOut{Key: b.Key, Kind: b.Kind, Error: b.Err.Error()})
		}
		for _, b := range eps {
			out = append(out, badRecordOut{Key: b.Key, Kind: "service", Error: b.Err.Error()})
		}
		// Not bad records: draft revisions (of a Visor older than releases)
		// that still run from the app's process types and env.
		if drafts, err := liveDrafts(ctx, r); err == nil && len(drafts) > 0 {
			fmt.Fprintf(e.stderr, "note: unreleased revisions with live instances (they start from the app's current process types and env until their next visor scale releases them): %s\n",
				strings.Join(drafts, ", "))
		}
		err = e.print(out, func(w io.Writer) {
			if len(out) == 0 {
				fmt.Fprintln(w, "no bad records")
				return
			}
			fmt.Fprintln(w, "KEY\tKIND\tERROR")
			for _, b := range out {
				fmt.Fprintf(w, "%s\t%s\t%s\n", b.Key, b.Kind, oneLine(b.Error))
			}
		})
		if err != nil || len(out) == 0 {
			return err
		}
		return fmt.Errorf("%d bad record%s in the registry", len(out), plural(len(out)))
	})
}

// skipped takes the records a listing skipped (registry.Skipped) out of
// err, warns about them on stderr, pointing at visor doctor, and returns
// the listing's other error: listings go on with the records that did
// decode.
func (e *env) skipped(err error) error {
	bad, rest := registry.Skipped(err)
	if len(bad) == 0 {
		return rest
	}
	keys := make([]string, 0, 3)
	for _, b := range bad[:min(len(bad), 3)] {
		keys = append(keys, b.Key)
	}
	more := ""
	if len(bad) > 3 {
		more = fmt.Sprintf(" and %d more", len(bad)-3)
	}
	verb := "do"
	if len(bad) == 1 {
		verb = "does"
	}
	fmt.Fprintf(e.stderr, "visor: warning: skipped %d record%s that %s not decode (%s%s); run visor doctor for details\n",
		len(bad), plural(len(bad)), verb, strings.Join(keys, ", "), more)
	return rest
}

// oneLine keeps a table cell on one line.
func oneLine(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' || r == '\t' }), " ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
