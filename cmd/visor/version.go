package main

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/visorhq/visor/internal/version"
)

func init() {
	register(&command{
		Name:  "version",
		Short: "print the version, commit and build date",
		Run:   runVersion,
	})
}

// versionInfo is what `visor version -o json` prints.
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
