package discovery

import (
	"errors"
	"strings"
	"testing"
)

func TestVersionMatch(t *testing.T) {
	t.Parallel()
	cases := []struct {
		query   string
		version string
		want    bool
	}{
		{"", "1.2.3", true},
		{"", "", true},
		{"", "a1b2c3d", true},
		{"1.2.3", "1.2.3", true},
		{"1.2.3", "1.2.4", false},
		{"1.2.3", "v1.2.3", true},
		{"1.2", "1.2.9", true},
		{"1.2", "1.3.0", false},
		{"^1.2", "1.2.0", true},
		{"^1.2", "1.9.3", true},
		{"^1.2", "2.0.0", false},
		{"^1.2", "1.1.9", false},
		{"^1.2", "1.3.0-beta.1", false},
		{"^1.3.0-0", "1.3.0-beta.1", true},
		{"~1.2", "1.2.7", true},
		{"~1.2", "1.3.0", false},
		{">=1.0 <2", "1.5.0", true},
		{">=1.0 <2", "2.0.0", false},
		{">=1.0, <2", "0.9.0", false},
		{"1.x", "1.4.4", true},
		{"1.2.3 || 2.x", "2.1.0", true},
		{"1.2.3 || 2.x", "1.2.4", false},
		{"*", "3.0.0", true},
		{"a1b2c3d", "a1b2c3d", true},
		{"a1b2c3d", "a1b2c3e", false},
		{"^1.2", "a1b2c3d", false},
		{"^1.2", "", false},
		{"release-7", "release-7", true},
		{"release-7", "release-8", false},
		{"v3", "3.1.0", true},
	}
	for _, tc := range cases {
		t.Run(tc.query+"_vs_"+tc.version, func(t *testing.T) {
			m, err := ParseVersionQuery(tc.query)
			if err != nil {
				t.Fatalf("ParseVersionQuery(%q): %v", tc.query, err)
			}
			if got := m.Match(tc.version); got != tc.want {
				t.Fatalf("%q matches %q = %v, want %v", tc.query, tc.version, got, tc.want)
			}
		})
	}
}

func TestVersionQueryInvalid(t *testing.T) {
	t.Parallel()
	for _, q := range []string{"^^1", ">=x <y", "1.2 beta", "../x", "a/b", "^", ">= 1.0 <", strings.Repeat("1", 300), "v 1"} {
		t.Run(q, func(t *testing.T) {
			if _, err := ParseVersionQuery(q); !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseVersionQuery(%q) = %v, want ErrInvalid", q, err)
			}
		})
	}
}

func TestValidateEndpoint(t *testing.T) {
	t.Parallel()
	good := instanceEndpoint("web.api", "1.2.3", "web-api-0a1b2c3d", "10.0.0.1", 8080, true)
	cases := []struct {
		name   string
		mutate func(e *Endpoint)
		want   error
	}{
		{"ok", func(e *Endpoint) {}, nil},
		{"ipv6 addr", func(e *Endpoint) { e.Addr = "fd00::1" }, nil},
		{"hostname addr", func(e *Endpoint) { e.Addr = "db-1.example.com" }, nil},
		{"empty name", func(e *Endpoint) { e.Service = "" }, ErrInvalid},
		{"upper name", func(e *Endpoint) { e.Service = "Web" }, ErrInvalid},
		{"slash name", func(e *Endpoint) { e.Service = "a/b" }, ErrInvalid},
		{"dotdot name", func(e *Endpoint) { e.Service = "../x" }, ErrInvalid},
		{"space name", func(e *Endpoint) { e.Service = "a b" }, ErrInvalid},
		{"long name", func(e *Endpoint) { e.Service = strings.Repeat("a", 300) }, ErrInvalid},
		{"bad id", func(e *Endpoint) { e.ID = "x/y" }, ErrInvalid},
		{"bad version", func(e *Endpoint) { e.Version = "1.2 beta" }, ErrInvalid},
		{"bad addr", func(e *Endpoint) { e.Addr = "not an addr" }, ErrInvalid},
		{"empty addr", func(e *Endpoint) { e.Addr = "" }, ErrInvalid},
		{"port high", func(e *Endpoint) { e.Port = 65536 }, ErrInvalid},
		{"port negative", func(e *Endpoint) { e.Port = -1 }, ErrInvalid},
		{"bad source", func(e *Endpoint) { e.Source = "other" }, ErrInvalid},
		{"bad meta key", func(e *Endpoint) { e.Meta = map[string]string{"a b": "c"} }, ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := good
			tc.mutate(&e)
			_, err := encode(e)
			if tc.want == nil && err != nil {
				t.Fatalf("encode: %v", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("encode = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSplitNameVersion(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, name, version string }{
		{"web", "web", ""},
		{"web@^1.2", "web", "^1.2"},
		{"web.api@1.2.3", "web.api", "1.2.3"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			n, v := SplitNameVersion(tc.in)
			if n != tc.name || v != tc.version {
				t.Fatalf("SplitNameVersion(%q) = %q, %q", tc.in, n, v)
			}
		})
	}
}
