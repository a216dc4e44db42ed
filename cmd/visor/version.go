package main

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/internal/version"
)

func newVersionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version, commit and build date",
		RunE:  runWith(e, runVersion),
	}
}

type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Date     string `json:"date"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func runVersion(_ context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return usageError("version: unexpected argument %q", args[0])
	}
	v := versionInfo{
		Version:  version.Version,
		Commit:   version.Commit,
		Date:     version.Date,
		Go:       runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH,
	}
	return e.print(v, func(w io.Writer) {
		fmt.Fprintf(w, "%s\n", version.String())
	})
}
