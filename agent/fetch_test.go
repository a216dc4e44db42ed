package agent

import (
	"testing"
)

// defaultUnpackLimits are the unpack limits of a default Config.
func defaultUnpackLimits() unpackLimits {
	return artifactLimitsOf(Config{}.withDefaults()).unpack
}

// newTestCache returns an artifact cache in a fresh temporary directory
// with the default limits, changed by mod if not nil.
func newTestCache(t *testing.T, mod func(*Config)) *artifactCache {
	t.Helper()
	cfg := Config{}
	if mod != nil {
		mod(&cfg)
	}
	cfg = cfg.withDefaults()
	return newArtifactCache(t.TempDir(), artifactLimitsOf(cfg), nil)
}
