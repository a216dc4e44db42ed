// Package version holds the build's version, commit and date, set at link
// time with -ldflags "-X github.com/visorhq/visor/internal/version.Version=...".
package version
