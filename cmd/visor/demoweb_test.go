package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
)

// TestDemoWeb: the quickstart's workload serves the instance's identity,
// says where it serves on stdout, logs each request on stderr, and exits 0
// when interrupted. Without $PORT or --addr it is a usage error.
func TestDemoWeb(t *testing.T) {
	t.Setenv("PORT", "")
	if res := runCLI("demo-web"); res.code != exitUsage || !strings.Contains(res.stderr, "$PORT") {
		t.Fatalf("demo-web without PORT: %d %q", res.code, res.stderr)
	}
	t.Setenv("VISOR_INSTANCE", "demo-web-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &lockedBuffer{}, &lockedBuffer{}
	code := make(chan int, 1)
	go func() {
		code <- runContext(ctx, []string{"demo-web", "--addr", "127.0.0.1:0"}, strings.NewReader(""), stdout, stderr)
	}()
	addrRe := regexp.MustCompile(`on (http://127\.0\.0\.1:\d+/)`)
	proctest.WaitFor(t, 10*time.Second, "demo-web to say where it serves", func() bool {
		return addrRe.MatchString(stdout.String())
	})
	url := addrRe.FindStringSubmatch(stdout.String())[1]
	resp, err := http.Get(url + "ping")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "hello from demo-web-1") {
		t.Fatalf("GET: %d %q", resp.StatusCode, body)
	}
	proctest.WaitFor(t, 10*time.Second, "the request logged on stderr", func() bool {
		return strings.Contains(stderr.String(), "GET /ping from 127.0.0.1:")
	})
	cancel()
	if c := <-code; c != exitOK {
		t.Fatalf("demo-web after interrupt: exit %d, stderr %q", c, stderr.String())
	}
	if !strings.Contains(stdout.String(), "demo-web: stopped") {
		t.Fatalf("stdout %q", stdout.String())
	}
}
