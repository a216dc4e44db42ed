package testtime

import "testing"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		ok   bool
	}{
		{"", 1, true},
		{"3", 3, true},
		{"0.5", 0.5, true},
		{"0", 0, false},
		{"-2", 0, false},
		{"fast", 0, false},
		{"1e9", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parse(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("parse(%q) error = %v, want ok=%v", tc.in, err, tc.ok)
			}
			if tc.ok && got != tc.want {
				t.Fatalf("parse(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}
