package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestAgentArtifactFlags: the artifact bounds parse from flags and the
// config file (byte counts with suffixes, durations, host lists), and bad
// values are errors naming the flag.
func TestAgentArtifactFlags(t *testing.T) {
	cfg := writeConfig(t, `{"host": "h1", "artifact_max_bytes": "3MiB", "artifact_max_entries": 500,
		"artifact_redirect_hosts": "cdn.example.com, mirror.example.com:8443", "artifact_cache_max_age": "24h"}`)
	o, err := parseAgentFlags([]string{"-config", cfg, "-artifact-timeout", "90s", "-artifact-cache-max-bytes", "1024"})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.ArtifactMaxBytes != 3<<20 || c.ArtifactMaxEntries != 500 || c.ArtifactTimeout != 90*time.Second ||
		c.ArtifactCacheMaxBytes != 1024 || c.ArtifactCacheMaxAge != 24*time.Hour ||
		c.ArtifactMaxUnpackedBytes != 8<<30 || c.ArtifactConnectTimeout != 30*time.Second || c.ArtifactFetchParallel != 8 ||
		!reflect.DeepEqual(c.ArtifactRedirectHosts, []string{"cdn.example.com", "mirror.example.com:8443"}) {
		t.Fatalf("artifact config = %+v", c)
	}
	for _, tc := range []struct{ flag, value string }{
		{"artifact-max-bytes", "2GB"},
		{"artifact-max-unpacked-bytes", "-1"},
		{"artifact-timeout", "soon"},
		{"artifact-max-entries", "many"},
		{"artifact-redirect-hosts", "http://x/"},
		{"artifact-fetch-parallel", "-2"},
	} {
		_, err := parseAgentFlags([]string{"-host", "h1", "-" + tc.flag, tc.value})
		if err == nil || !strings.Contains(strings.ReplaceAll(err.Error(), "_", "-"), tc.flag) {
			t.Errorf("-%s %s: err = %v, want an error naming the flag", tc.flag, tc.value, err)
		}
	}
}
