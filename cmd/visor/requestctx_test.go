package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestRequestContext: a command's registry work is bounded by --timeout
// unless it follows or waits. Without the bound, `visor hosts` whose etcd
// went away just after the connect hung for good (found when a dev agent
// failed to start after its etcd was up: the etcd client waits for a lost
// etcd to come back).
func TestRequestContext(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		bounded bool
		timeout time.Duration // --timeout as resolved; 0 means the default, 10 s
	}{
		{[]string{"hosts"}, true, 0},
		{[]string{"host", "list", "-w"}, false, 0},
		{[]string{"ps", "demo"}, true, 0},
		{[]string{"events", "-f"}, false, 0},
		{[]string{"events"}, true, 0},
		{[]string{"scale", "demo", "v1", "web=1"}, true, 0},
		{[]string{"scale", "demo", "v1", "web=1", "--wait"}, false, 0},
		{[]string{"restart", "x", "--wait"}, false, 0},
		{[]string{"deploy", "status", "demo", "-w"}, false, 0},
		{[]string{"logs", "x", "-f"}, false, 0},
		{[]string{"--timeout", "3s", "status"}, true, 3 * time.Second},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			e := &env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}
			root := newRootCmd(e)
			args := normalizeArgs(root, tc.args)
			cmd, rest, err := root.Find(args)
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.ParseFlags(rest); err != nil {
				t.Fatal(err)
			}
			if err := root.PersistentPreRunE(cmd, nil); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := e.requestContext(context.Background())
			defer cancel()
			dl, ok := ctx.Deadline()
			if ok != tc.bounded {
				t.Fatalf("deadline set = %v, want %v", ok, tc.bounded)
			}
			want := tc.timeout
			if want == 0 {
				want = 10 * time.Second
			}
			if e.globals.timeout != want {
				t.Fatalf("--timeout resolved to %s, want %s", e.globals.timeout, want)
			}
			if ok {
				if left := time.Until(dl); left <= 0 || left > e.globals.timeout {
					t.Fatalf("deadline in %s, want within --timeout %s", left, e.globals.timeout)
				}
			}
		})
	}
}
