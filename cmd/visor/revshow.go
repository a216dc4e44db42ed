package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newRevShowCmd(e *env) *cobra.Command {
	show := &cobra.Command{
		Use:   "show APP REV",
		Short: "show a revision: its source, released or draft, and its process types and env keys",
		Long: `A released revision runs its own process types and env: the app's as they
were at its first scale. show lists the release's process types (with their
commands) and env var names; --env adds the values. A draft revision runs the
app's current process types and env until its first scale releases it.`,
		RunE: runWith(e, runRevShow),
	}
	show.Flags().Bool("env", false, "also print the release's env var values")
	return show
}

func runRevShow(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, 2, "APP REV"); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		v, err := r.Revision(ctx, args[0], args[1])
		if err != nil {
			return fmt.Errorf("show revision %s/%s: %w", args[0], args[1], err)
		}
		out := newRevOut(v)
		if flagBool(e, "env") && v.Release != nil {
			out.Env = v.Release.Env
		}
		return e.print(out, func(w io.Writer) { printRev(w, out, v) })
	})
}

// printRev writes the text form of rev show.
func printRev(w io.Writer, out revOut, v registry.Revision) {
	fmt.Fprintf(w, "revision %s/%s\n", out.App, out.Name)
	fmt.Fprintf(w, "source:\t%s\n", out.source())
	if out.SHA256 != "" {
		fmt.Fprintf(w, "sha256:\t%s\n", out.SHA256)
	}
	fmt.Fprintf(w, "created:\t%s\n", ago(out.Created))
	if v.Release == nil {
		fmt.Fprintln(w, "state:\tdraft (runs the app's current process types and env; its first scale releases it)")
		return
	}
	fmt.Fprintf(w, "state:\treleased %s\n", ago(v.Release.Released))
	fmt.Fprintln(w, "process types:")
	for _, name := range sortedKeys(v.Release.Procs) {
		p := v.Release.Procs[name]
		cmd := p.Command
		if cmd == "" {
			cmd = "(the artifact's Procfile line)"
		}
		fmt.Fprintf(w, "  %s\t%s\n", name, cmd)
	}
	fmt.Fprintf(w, "env keys:\t%s\n", dash(strings.Join(out.EnvKeys, " ")))
	if out.Env != nil {
		for _, k := range out.EnvKeys {
			fmt.Fprintf(w, "  %s=%s\n", k, out.Env[k])
		}
	}
}

// stateCell is a revision's STATE cell in rev list: "released 5m ago" or
// "draft".
func (v revOut) stateCell() string {
	if v.Released == nil {
		return v.State
	}
	return "released " + ago(*v.Released)
}

func runRevRegisterFrom(ctx context.Context, e *env, app, rev, from string) error {
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		v, err := r.RegisterRevisionFrom(ctx, app, rev, from)
		if err != nil {
			return fmt.Errorf("register revision %s/%s from %s: %w", app, rev, from, err)
		}
		return e.print(newRevOut(v), func(w io.Writer) {
			fmt.Fprintf(w, "registered revision %s/%s (the source of %s)\n", v.App, v.Name, from)
		})
	})
}

// noteReleased tells the operator, on stderr, that a change of app's
// process types or env (what) reaches only revisions released from now
// on, when the app has released revisions. It says nothing if they cannot
// be read: the change itself succeeded.
func noteReleased(ctx context.Context, e *env, r *registry.Registry, app, what string) {
	revs, err := r.Revisions(ctx, app)
	if _, err = registry.Skipped(err); err != nil {
		return
	}
	var released []string
	for _, v := range revs {
		if v.Released() {
			released = append(released, v.Name)
		}
	}
	if len(released) == 0 {
		return
	}
	sort.Strings(released)
	keep := "keep their own"
	if len(released) == 1 {
		keep = "keeps its own"
	}
	fmt.Fprintf(e.stderr, "note: %s applies to the next release (a revision scaled for the first time); released revision%s %s %s (ship it with a new revision: visor rev register %s NEWREV --from REV, then scale it)\n",
		what, plural(len(released)), strings.Join(released, ", "), keep, app)
}

// liveDrafts lists the draft revisions (records of a Visor older than
// releases) that have live instances: they start from the app's current
// process types and env until their next scale releases them.
func liveDrafts(ctx context.Context, r *registry.Registry) ([]string, error) {
	insts, err := r.Instances(ctx)
	if _, err = registry.Skipped(err); err != nil {
		return nil, err
	}
	live := map[[2]string]int{}
	for _, in := range insts {
		if !in.State.Terminal() {
			live[[2]string{in.App, in.Rev}]++
		}
	}
	var out []string
	checked := map[string]bool{}
	for k := range live {
		if checked[k[0]] {
			continue
		}
		checked[k[0]] = true
		revs, err := r.Revisions(ctx, k[0])
		if _, err = registry.Skipped(err); err != nil && !errors.Is(err, registry.ErrNotFound) {
			return nil, err
		}
		for _, v := range revs {
			if n := live[[2]string{v.App, v.Name}]; n > 0 && !v.Released() {
				out = append(out, fmt.Sprintf("%s/%s (%d live)", v.App, v.Name, n))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}
