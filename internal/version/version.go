package version

// Set at build time; the defaults describe an untagged developer build.
var (
	// Version is the semantic version of the build (vMAJOR.MINOR.PATCH).
	Version = "v0.0.0-dev"
	// Commit is the git commit the build was made from.
	Commit = "unknown"
	// Date is the UTC build time in RFC 3339.
	Date = "unknown"
)

// String returns "visor VERSION (commit COMMIT, built DATE)".
func String() string {
	return "visor " + Version + " (commit " + Commit + ", built " + Date + ")"
}
