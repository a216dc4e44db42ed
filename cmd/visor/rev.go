package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newRevCmd(e *env) *cobra.Command {
	register := &cobra.Command{
		Use:   "register APP REV (--artifact URL --sha256 HEX | --dir PATH | --from OLDREV)",
		Short: "register a revision: a tar.gz artifact or a directory on the hosts",
		Long: `--artifact is a file://, http:// or https:// URL of a tar.gz; agents fetch it
and check it against --sha256 (64 hex digits). --dir is an absolute path of a
directory that is already present on every host. --from copies the artifact
(or directory) of the revision OLDREV: how a change of process types or env
ships for a build already registered.

A new revision is a draft: its first scale releases it, with the app's
process types and env of that moment, which it keeps from then on.`,
		RunE: runWith(e, runRevRegister),
	}
	register.Flags().String("artifact", "", "URL of the revision's tar.gz (file://, http://, https://)")
	register.Flags().String("sha256", "", "sha256 of the artifact, 64 hex digits")
	register.Flags().String("dir", "", "absolute path of a directory already present on the hosts")
	register.Flags().String("from", "", "copy the artifact or directory of this revision of the app")
	return group(&cobra.Command{Use: "rev", Short: "register, list and delete an app's revisions"},
		register,
		&cobra.Command{Use: "list APP", Aliases: []string{"ls"}, Short: "list an app's revisions, released or draft", RunE: runWith(e, runRevList)},
		newRevShowCmd(e),
		&cobra.Command{Use: "delete APP REV", Short: "delete a revision", RunE: runWith(e, runRevDelete)},
	)
}

// revOut is the CLI's JSON form of a revision.
type revOut struct {
	App         string    `json:"app"`
	Name        string    `json:"name"`
	ArtifactURL string    `json:"artifact_url,omitempty"`
	SHA256      string    `json:"sha256,omitempty"`
	Dir         string    `json:"dir,omitempty"`
	Created     time.Time `json:"created"`
	// State is "released" or "draft" (see revState).
	State    string     `json:"state"`
	Released *time.Time `json:"released,omitempty"`
	// Procs are the release's process types: name -> command ("" = the
	// Procfile's line); EnvKeys the release's env var names. Env holds the
	// values only when asked (rev show --env).
	Procs   map[string]string `json:"procs,omitempty"`
	EnvKeys []string          `json:"env_keys,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
}

func newRevOut(v registry.Revision) revOut {
	out := revOut{App: v.App, Name: v.Name, ArtifactURL: v.ArtifactURL, SHA256: v.SHA256, Dir: v.Dir, Created: v.Created, State: "draft"}
	if rl := v.Release; rl != nil {
		out.State, out.Released = "released", &rl.Released
		out.Procs = make(map[string]string, len(rl.Procs))
		for name, p := range rl.Procs {
			out.Procs[name] = p.Command
		}
		out.EnvKeys = sortedKeys(rl.Env)
	}
	return out
}

// source is the revision's artifact URL or directory, for tables.
func (v revOut) source() string {
	if v.Dir != "" {
		return "dir " + v.Dir
	}
	return v.ArtifactURL
}

// checkRevSource validates the --artifact/--sha256/--dir combination.
func checkRevSource(artifact, sum, dir string) error {
	switch {
	case artifact == "" && dir == "":
		return usageError("rev register: give --artifact URL --sha256 HEX, or --dir PATH")
	case artifact != "" && dir != "":
		return usageError("rev register: --artifact and --dir are exclusive")
	case dir != "":
		if sum != "" {
			return usageError("rev register: --sha256 goes with --artifact, not --dir")
		}
		if !filepath.IsAbs(dir) {
			return usageError("rev register: --dir %q: want an absolute path (it names a directory on the hosts)", dir)
		}
		return nil
	}
	if sum == "" {
		return usageError("rev register: --artifact needs --sha256")
	}
	u, err := url.Parse(artifact)
	if err != nil {
		return usageError("rev register: --artifact %q: %v", artifact, err)
	}
	switch u.Scheme {
	case "file", "http", "https":
	default:
		return usageError("rev register: --artifact %q: want a file://, http:// or https:// URL", artifact)
	}
	return nil
}

func runRevRegister(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, 2, "APP REV"); err != nil {
		return err
	}
	artifact, sum, dir := flagString(e, "artifact"), flagString(e, "sha256"), flagString(e, "dir")
	if from := flagString(e, "from"); from != "" {
		if artifact != "" || sum != "" || dir != "" {
			return usageError("rev register: --from copies the artifact or dir; give no --artifact, --sha256 or --dir with it")
		}
		return runRevRegisterFrom(ctx, e, args[0], args[1], from)
	}
	if err := checkRevSource(artifact, sum, dir); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		v, err := r.RegisterRevision(ctx, registry.Revision{
			App:         args[0],
			Name:        args[1],
			ArtifactURL: artifact,
			SHA256:      sum,
			Dir:         dir,
		})
		if err != nil {
			return fmt.Errorf("register revision %s/%s: %w", args[0], args[1], err)
		}
		return e.print(newRevOut(v), func(w io.Writer) {
			fmt.Fprintf(w, "registered revision %s/%s\n", v.App, v.Name)
		})
	})
}

func runRevList(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 1, 1, "APP"); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		revs, err := r.Revisions(ctx, args[0])
		if err := e.skipped(err); err != nil {
			return fmt.Errorf("list revisions of app %q: %w", args[0], err)
		}
		out := make([]revOut, 0, len(revs))
		for _, v := range revs {
			out = append(out, newRevOut(v))
		}
		sort.Slice(out, func(i, j int) bool {
			if !out[i].Created.Equal(out[j].Created) {
				return out[i].Created.Before(out[j].Created)
			}
			return out[i].Name < out[j].Name
		})
		return e.print(out, func(w io.Writer) {
			fmt.Fprintln(w, "REV\tSOURCE\tSHA256\tCREATED\tSTATE\tPROCS")
			for _, v := range out {
				sum := v.SHA256
				if len(sum) > 12 {
					sum = sum[:12]
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.source(), dash(sum), ago(v.Created), v.stateCell(), dash(strings.Join(sortedKeys(v.Procs), ",")))
			}
		})
	})
}

func runRevDelete(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, 2, "APP REV"); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		if err := r.UnregisterRevision(ctx, args[0], args[1]); err != nil {
			return fmt.Errorf("delete revision %s/%s: %w", args[0], args[1], err)
		}
		return e.print(map[string]string{"app": args[0], "deleted": args[1]}, func(w io.Writer) {
			fmt.Fprintf(w, "deleted revision %s/%s\n", args[0], args[1])
		})
	})
}
