package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newRevCmd(e *env) *cobra.Command {
	register := &cobra.Command{
		Use:   "register APP REV (--artifact URL --sha256 HEX | --dir PATH)",
		Short: "register a revision: a tar.gz artifact or a directory on the hosts",
		Long: `--artifact is a file://, http:// or https:// URL of a tar.gz; agents fetch it
and check it against --sha256 (64 hex digits). --dir is an absolute path of a
directory that is already present on every host.`,
		RunE: runWith(e, runRevRegister),
	}
	register.Flags().String("artifact", "", "URL of the revision's tar.gz (file://, http://, https://)")
	register.Flags().String("sha256", "", "sha256 of the artifact, 64 hex digits")
	register.Flags().String("dir", "", "absolute path of a directory already present on the hosts")
	return group(&cobra.Command{Use: "rev", Short: "register, list and delete an app's revisions"},
		register,
		&cobra.Command{Use: "list APP", Aliases: []string{"ls"}, Short: "list an app's revisions", RunE: runWith(e, runRevList)},
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
}

func newRevOut(v registry.Revision) revOut {
	return revOut{App: v.App, Name: v.Name, ArtifactURL: v.ArtifactURL, SHA256: v.SHA256, Dir: v.Dir, Created: v.Created}
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
	if err := checkRevSource(artifact, sum, dir); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(r *registry.Registry) error {
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
	return withRegistry(ctx, e, func(r *registry.Registry) error {
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
			fmt.Fprintln(w, "REV\tSOURCE\tSHA256\tCREATED")
			for _, v := range out {
				sum := v.SHA256
				if len(sum) > 12 {
					sum = sum[:12]
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", v.Name, v.source(), dash(sum), ago(v.Created))
			}
		})
	})
}

func runRevDelete(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 2, 2, "APP REV"); err != nil {
		return err
	}
	return withRegistry(ctx, e, func(r *registry.Registry) error {
		if err := r.UnregisterRevision(ctx, args[0], args[1]); err != nil {
			return fmt.Errorf("delete revision %s/%s: %w", args[0], args[1], err)
		}
		return e.print(map[string]string{"app": args[0], "deleted": args[1]}, func(w io.Writer) {
			fmt.Fprintf(w, "deleted revision %s/%s\n", args[0], args[1])
		})
	})
}
