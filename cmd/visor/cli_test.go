package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// TestMain fails the package's tests if goroutines outlive them: every
// command must have ended its watches and connections when it returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness runs the visor CLI in-process against one embedded etcd member,
// under a key prefix of its own.
type harness struct {
	t      *testing.T
	etcd   *etcdtest.Cluster
	ep     string
	prefix string
}

// newHarness starts an embedded etcd for t.
func newHarness(t *testing.T) *harness {
	t.Helper()
	c := etcdtest.New(t)
	return &harness{t: t, etcd: c, ep: strings.Join(c.Endpoints(), ","), prefix: etcdtest.Prefix(t)}
}

// sub returns a harness on the same etcd with a fresh prefix, for subtests.
func (h *harness) sub(t *testing.T) *harness {
	return &harness{t: t, etcd: h.etcd, ep: h.ep, prefix: etcdtest.Prefix(t)}
}

// result is what one CLI invocation produced.
type result struct {
	code           int
	stdout, stderr string
}

// run invokes the CLI with the harness's endpoints and prefix.
func (h *harness) run(args ...string) result {
	h.t.Helper()
	full := append([]string{"--endpoints", h.ep, "--prefix", h.prefix, "--timeout", "10s"}, args...)
	return runCLI(full...)
}

func runCLI(args ...string) result {
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(""), &stdout, &stderr)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// ok runs the CLI and fails the test unless it exits 0; it returns stdout.
func (h *harness) ok(args ...string) string {
	h.t.Helper()
	res := h.run(args...)
	if res.code != 0 {
		h.t.Fatalf("visor %s: exit %d, stderr: %s", strings.Join(args, " "), res.code, res.stderr)
	}
	return res.stdout
}

// okJSON runs the CLI with -o json and decodes stdout into v.
func (h *harness) okJSON(v any, args ...string) {
	h.t.Helper()
	out := h.ok(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		h.t.Fatalf("visor %s -o json: decode %q: %v", strings.Join(args, " "), out, err)
	}
}

// fails runs the CLI and checks that it exits with code and prints exactly
// one line on stderr, starting with "visor: " and containing every want.
func (h *harness) fails(code int, want []string, args ...string) {
	h.t.Helper()
	checkFailure(h.t, h.run(args...), code, want, args)
}

func checkFailure(t *testing.T, res result, code int, want []string, args []string) {
	t.Helper()
	if res.code != code {
		t.Fatalf("visor %s: exit %d, want %d; stdout %q stderr %q", strings.Join(args, " "), res.code, code, res.stdout, res.stderr)
	}
	msg := res.stderr
	if !strings.HasPrefix(msg, "visor: ") || strings.Count(msg, "\n") != 1 || !strings.HasSuffix(msg, "\n") {
		t.Fatalf("visor %s: stderr is not one line starting with 'visor: ': %q", strings.Join(args, " "), msg)
	}
	// errUsage only marks an error: its text must not show, even when the
	// usage error is wrapped ("service render: usage: agent flags: ...").
	if strings.Contains(msg, "usage: ") {
		t.Errorf("visor %s: stderr %q shows errUsage's text", strings.Join(args, " "), msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("visor %s: stderr %q does not mention %q", strings.Join(args, " "), msg, w)
		}
	}
}

// registry returns a registry client on the harness's etcd and prefix, the
// way an agent or another program would use it.
func (h *harness) registry() *registry.Registry {
	h.t.Helper()
	r := registry.New(h.etcd.Client(h.t), h.prefix, hclog.NewNullLogger())
	h.t.Cleanup(func() { r.Close() })
	return r
}

// ctx returns a context bounded for one test step.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(30*time.Second))
	t.Cleanup(cancel)
	return ctx
}

// keysOf returns the sorted keys of a decoded JSON object.
func keysOf(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkFields fails unless the JSON object m has exactly the given keys.
func checkFields(t *testing.T, what string, m map[string]any, want ...string) {
	t.Helper()
	sort.Strings(want)
	if got := keysOf(m); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s: json fields %v, want %v", what, got, want)
	}
}

// myCommands are the commands this file's package tests cover.
var myCommands = []string{"app", "env", "rev", "proc", "scale", "ps", "ticket", "tickets", "host", "hosts", "events", "restart", "stop"}

// TestHelpOnEveryCommand: "visor CMD --help" and "visor help CMD" print the
// same help, on stdout, with the command's usage line and the global flags
// apart from the command's own.
func TestHelpOnEveryCommand(t *testing.T) {
	root := newRootCmd(&env{})
	var paths [][]string
	for _, c := range root.Commands() {
		if !contains(myCommands, c.Name()) {
			continue
		}
		paths = append(paths, []string{c.Name()})
		for _, s := range c.Commands() {
			paths = append(paths, []string{c.Name(), s.Name()})
		}
	}
	if len(paths) < 20 {
		t.Fatalf("found %d commands, want every registry command registered", len(paths))
	}
	for _, p := range paths {
		t.Run(strings.Join(p, "_"), func(t *testing.T) {
			res := runCLI(append(p, "--help")...)
			if res.code != 0 || res.stderr != "" {
				t.Fatalf("visor %s --help: exit %d: %s", strings.Join(p, " "), res.code, res.stderr)
			}
			want := "visor " + strings.Join(p, " ")
			if !strings.Contains(res.stdout, "Usage:\n  "+want) || !strings.Contains(res.stdout, "Global Flags:\n") ||
				!strings.Contains(res.stdout[strings.Index(res.stdout, "Global Flags:"):], "--endpoints") {
				t.Errorf("visor %s --help: want %q and the global flags apart in:\n%s", strings.Join(p, " "), want, res.stdout)
			}
			if help := runCLI(append([]string{"help"}, p...)...); help.code != 0 || help.stdout != res.stdout {
				t.Errorf("visor help %s: exit %d, output differs from --help:\n%s", strings.Join(p, " "), help.code, help.stdout)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestBadInputNoRegistry covers usage errors found before dialling: they
// must not need etcd, so the endpoint here is unreachable.
func TestBadInputNoRegistry(t *testing.T) {
	dead := []string{"--endpoints", "127.0.0.1:1", "--timeout", "1s"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"app create missing", []string{"app", "create"}, []string{"missing argument", "APP"}},
		{"logs tail too big", []string{"logs", "web-worker-00000000", "--tail", "100001"}, []string{"--tail 100001", "0 to 100000"}},
		{"logs tail negative", []string{"logs", "web-worker-00000000", "--tail", "-1"}, []string{"--tail -1", "0 to 100000"}},
		{"app create extra", []string{"app", "create", "a", "b"}, []string{"unexpected argument", `"b"`}},
		{"app show missing", []string{"app", "show"}, []string{"missing argument", "APP"}},
		{"app delete missing", []string{"app", "delete"}, []string{"missing argument", "APP"}},
		{"app list extra", []string{"app", "list", "x"}, []string{"unexpected argument", `"x"`}},
		{"app unknown sub", []string{"app", "frob"}, []string{"unknown command", `"frob"`}},
		{"env set missing", []string{"env", "set", "web"}, []string{"missing argument", "KEY=VALUE"}},
		{"env set no equals", []string{"env", "set", "web", "FOO"}, []string{`"FOO"`, "KEY=VALUE"}},
		{"env set empty key", []string{"env", "set", "web", "=x"}, []string{`"=x"`, "KEY=VALUE"}},
		{"env set twice", []string{"env", "set", "web", "A=1", "A=2"}, []string{"A given twice"}},
		{"env unset missing", []string{"env", "unset", "web"}, []string{"missing argument"}},
		{"env unset assignment", []string{"env", "unset", "web", "A=1"}, []string{`"A=1"`, "want a KEY"}},
		{"env list missing", []string{"env", "list"}, []string{"missing argument", "APP"}},
		{"rev register missing", []string{"rev", "register", "web"}, []string{"missing argument", "APP REV"}},
		{"rev register no source", []string{"rev", "register", "web", "v1"}, []string{"--artifact", "--dir"}},
		{"rev register both", []string{"rev", "register", "web", "v1", "--artifact", "file:///a.tgz", "--sha256", strings.Repeat("a", 64), "--dir", "/srv"}, []string{"exclusive"}},
		{"rev register no sha", []string{"rev", "register", "web", "v1", "--artifact", "file:///a.tgz"}, []string{"--sha256"}},
		{"rev register bad scheme", []string{"rev", "register", "web", "v1", "--artifact", "ftp://x/a.tgz", "--sha256", strings.Repeat("a", 64)}, []string{"ftp://x/a.tgz", "file://"}},
		{"rev register relative dir", []string{"rev", "register", "web", "v1", "--dir", "srv/web"}, []string{`"srv/web"`, "absolute"}},
		{"rev delete missing", []string{"rev", "delete", "web"}, []string{"missing argument", "APP REV"}},
		{"proc set missing", []string{"proc", "set", "web"}, []string{"missing argument", "APP PROC"}},
		{"proc delete missing", []string{"proc", "delete", "web"}, []string{"missing argument"}},
		{"proc set bad env flag", []string{"proc", "set", "web", "web", "--env", "NOEQUALS"}, []string{"NOEQUALS", "KEY=VALUE"}},
		{"proc set bad duration", []string{"proc", "set", "web", "web", "--stop-timeout", "soon"}, []string{"stop-timeout", "soon"}},
		{"proc set bad memory", []string{"proc", "set", "web", "web", "--memory", "abc"}, []string{"--memory", `"abc"`}},
		{"proc set memory rounds to 0", []string{"proc", "set", "web", "web", "--memory", "0.5"}, []string{"--memory", `"0.5"`}},
		{"proc set cpu rounds to 0", []string{"proc", "set", "web", "web", "--cpu", "0.0004"}, []string{"--cpu", "minimum"}},
		{"proc set cpu below minimum", []string{"proc", "set", "web", "web", "--cpu", "5"}, []string{"--cpu", "minimum"}},
		{"proc set bad restart", []string{"proc", "set", "web", "web", "--restart", "sometimes"}, []string{"--restart", `"sometimes"`}},
		{"proc set bad signal", []string{"proc", "set", "web", "web", "--stop-signal", "FOO"}, []string{"--stop-signal", `"FOO"`}},
		{"proc set bad health type", []string{"proc", "set", "web", "web", "--health-type", "smoke"}, []string{"--health-type", `"smoke"`}},
		{"proc set bad health path", []string{"proc", "set", "web", "web", "--health-path", "x"}, []string{"--health-path", `"x"`}},
		{"proc set bad health period", []string{"proc", "set", "web", "web", "--health-period", "0s"}, []string{"--health-period", "positive"}},
		{"proc set bad pids", []string{"proc", "set", "web", "web", "--pids", "-1"}, []string{"--pids", "negative"}},
		{"proc set env twice", []string{"proc", "set", "web", "web", "--env", "A=1", "--env", "A=2"}, []string{"A given twice"}},
		{"scale missing", []string{"scale", "web", "v1"}, []string{"missing argument", "PROC=N"}},
		{"scale negative", []string{"scale", "web", "v1", "web=-1"}, []string{`"web=-1"`, "negative"}},
		{"scale malformed", []string{"scale", "web", "v1", "web=x"}, []string{`"web=x"`, "not a number"}},
		{"scale no equals", []string{"scale", "web", "v1", "web"}, []string{`"web"`, "PROC=N"}},
		{"scale twice", []string{"scale", "web", "v1", "web=1", "web=2"}, []string{"given twice"}},
		{"scale bad timeout", []string{"scale", "web", "v1", "web=1", "--wait", "--wait-timeout", "0s"}, []string{"--wait-timeout", "positive"}},
		{"restart missing", []string{"restart"}, []string{"restart", "INSTANCE"}},
		{"stop missing", []string{"stop"}, []string{"stop", "INSTANCE"}},
		{"restart bad timeout", []string{"restart", "web-web-00000000", "--wait", "--wait-timeout", "-1s"}, []string{"--wait-timeout", "positive"}},
		{"ps extra", []string{"ps", "a", "b"}, []string{"unexpected argument", `"b"`}},
		{"tickets extra", []string{"tickets", "x"}, []string{"unexpected argument"}},
		{"hosts extra", []string{"hosts", "x"}, []string{"unexpected argument"}},
		{"events neither since nor follow", []string{"events"}, []string{"--since", "-f"}},
		{"events negative since", []string{"events", "--since", "-3"}, []string{"--since", "negative"}},
		{"events bad since", []string{"events", "--since", "x"}, []string{"since"}},
		{"bad output format", []string{"app", "list", "-o", "yaml"}, []string{"-o", `"yaml"`}},
		{"bad output format ps", []string{"ps", "-o", "xml"}, []string{"-o", `"xml"`}},
		{"unknown flag", []string{"ps", "--frob"}, []string{"frob"}},
		{"dash dash ends flags", []string{"app", "list", "--", "-x"}, []string{"unexpected argument", `"-x"`}},
		{"dash dash after positional", []string{"app", "show", "web", "--", "-o", "json"}, []string{"unexpected argument", `"-o"`}},
		{"flag after dash dash value", []string{"app", "list", "--prefix", "--", "-o", "yaml"}, []string{"-o", `"yaml"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{}, dead...), tc.args...)
			checkFailure(t, runCLI(args...), 2, tc.want, args)
		})
	}
}

// TestEmptyEndpoints checks that an explicitly empty --endpoints is an
// error wherever it is given, and that it does not reset the other global
// flags to their defaults (it once made -o json print a table and app list
// dial the default endpoint).
func TestEmptyEndpoints(t *testing.T) {
	for _, args := range [][]string{
		{"--endpoints=", "version"},
		{"-o", "json", "--endpoints=", "version"},
		{"version", "--endpoints="},
		{"--endpoints=", "app", "list"},
		{"--endpoints", "", "-o", "json", "app", "list"},
		{"app", "--endpoints=", "list"},
		{"app", "list", "--endpoints="},
		{"app", "list", "--endpoints", " , "},
		{"--endpoints", "127.0.0.1:1", "app", "list", "--endpoints="},
		{"agent", "--endpoints="},
	} {
		res := runCLI(args...)
		checkFailure(t, res, 2, []string{"--endpoints is empty"}, args)
		if res.stdout != "" {
			t.Errorf("visor %s: wrote %q", strings.Join(args, " "), res.stdout)
		}
	}
}

// TestGlobalFlagsAtEveryLevel checks that a global flag given before the
// command's name keeps its value through the levels of the tree.
func TestGlobalFlagsAtEveryLevel(t *testing.T) {
	res := runCLI("-o", "json", "version")
	var v map[string]any
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &v) != nil {
		t.Fatalf("visor -o json version: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	h := newHarness(t)
	h.ok("app", "create", "web")
	for _, args := range [][]string{
		{"-o", "json", "app", "list"},
		{"app", "-o", "json", "list"},
		{"-o", "json", "app", "--timeout", "5s", "list"},
		{"app", "list", "-o", "json"},
	} {
		out := h.ok(args...)
		var list []map[string]any
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 {
			t.Errorf("visor %s: want a JSON list of one app, got %q", strings.Join(args, " "), out)
		}
	}
}

// TestNormalizeArgs: the spellings Go's flag package accepted keep
// working: single-dash long flags, "--" for one-letter flags, a "--" that
// is a flag's value, and "--" ending the flags.
func TestNormalizeArgs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"app list -o json", "app list -o json"},
		{"-endpoints x -prefix=/p/ app list", "--endpoints x --prefix=/p/ app list"},
		{"--o json app show web", "-o json app show web"},
		{"-o=json hosts -w", "-o=json hosts -w"},
		{"hosts --w", "hosts -w"},
		{"events -since 3 -f", "events --since 3 -f"},
		{"app show -- -o", "app show -- -o"},
		{"app list -prefix -- -o json", "app list --prefix -- -o json"},
		{"scale web v1 web=1 -wait -wait-timeout 1s", "scale web v1 web=1 --wait --wait-timeout 1s"},
		{"proc set web web -command -dev", "proc set web web --command -dev"},
		{"app -help", "app --help"},
		{"agent -dev -data-dir /d", "agent -dev -data-dir /d"},
		{"-endpoints e agent -dev", "--endpoints e agent -dev"},
		{"service install -init systemd -- -host h", "service install -init systemd -- -host h"},
		{"service status -init systemd", "service status --init systemd"},
		{"ps web -frob", "ps web -frob"},
	} {
		got := strings.Join(normalizeArgs(newRootCmd(&env{}), strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("normalizeArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestUnknownCommand: an unknown command is a usage error on one line that
// names the closest commands, at the top level and in a group, and for
// "visor help CMD" too.
func TestUnknownCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"scal"}, []string{`unknown command "scal" for "visor"`, `did you mean "scale"`}},
		{[]string{"app", "craete"}, []string{`unknown command "craete" for "visor app"`, `did you mean "create"`}},
		{[]string{"help", "scal"}, []string{`unknown command "scal" for "visor"`, `"scale"`}},
		{[]string{"frobnicate"}, []string{`unknown command "frobnicate" for "visor"`}},
	} {
		res := runCLI(tc.args...)
		checkFailure(t, res, 2, tc.want, tc.args)
		if strings.Contains(res.stderr, "visor: visor") {
			t.Errorf("visor %s: prefix repeated: %q", strings.Join(tc.args, " "), res.stderr)
		}
	}
}

func TestErrorLine(t *testing.T) {
	err := joinErrors(nil, usageError("a: %w", registry.ErrNotFound), nil, errors.New("b\nc\r\n"))
	if got, want := errorLine(err), "a: registry: not found; b; c"; got != want {
		t.Errorf("errorLine = %q, want %q", got, want)
	}
	if !errors.Is(err, errUsage) || !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("joined error %v loses what it wraps", err)
	}
	if joinErrors(nil, nil) != nil {
		t.Error("joinErrors of nils is not nil")
	}
	wrapped := fmt.Errorf("service render: %w", usageError("agent flags: %s", "bad"))
	if got, want := errorLine(wrapped), "service render: agent flags: bad"; !errors.Is(wrapped, errUsage) || got != want {
		t.Errorf("wrapped usage error: %q, want %q", got, want)
	}
}

func TestUnreachableRegistry(t *testing.T) {
	args := []string{"--endpoints", "127.0.0.1:1", "--timeout", "1s", "app", "list"}
	checkFailure(t, runCLI(args...), 1, []string{"127.0.0.1:1"}, args)
}

// registerHost registers host id with a session closed at cleanup, the way
// an agent starts.
func registerHost(t *testing.T, r *registry.Registry, id string) *registry.HostSession {
	t.Helper()
	sess, err := r.RegisterHost(testContext(t), registry.Host{ID: id, Addr: id + ".local:7070", Version: "test"}, 30*time.Second)
	if err != nil {
		t.Fatalf("register host %s: %v", id, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(5*time.Second))
		defer cancel()
		sess.Close(ctx)
	})
	return sess
}

// carryOut does what an agent does with a ticket, through the registry's
// host session API: a start ticket is claimed and its instance reported
// starting and then running; a stop ticket is claimed and its instance
// reported stopping and then exited.
func carryOut(ctx context.Context, sess *registry.HostSession, tk registry.Ticket) error {
	inst, err := sess.Claim(ctx, tk)
	if err != nil {
		return err
	}
	switch tk.Op {
	case registry.TicketStart:
		inst.State = registry.InstanceStarting
		if err := sess.UpdateInstance(ctx, inst); err != nil {
			return err
		}
		inst.State, inst.PID, inst.Port = registry.InstanceRunning, 4242, 5000
		return sess.CompleteWith(ctx, tk, inst)
	case registry.TicketStop:
		inst.State = registry.InstanceStopping
		if err := sess.UpdateInstance(ctx, inst); err != nil {
			return err
		}
		code := 0
		inst.State, inst.ExitCode, inst.Reason = registry.InstanceExited, &code, "stopped"
		return sess.CompleteWith(ctx, tk, inst)
	default:
		return sess.Complete(ctx, tk)
	}
}

// failStart claims a start ticket and reports its instance failed, as an
// agent does when the command is not found.
func failStart(ctx context.Context, sess *registry.HostSession, tk registry.Ticket) error {
	inst, err := sess.Claim(ctx, tk)
	if err != nil {
		return err
	}
	inst.State, inst.Reason = registry.InstanceFailed, "command not found"
	return sess.CompleteWith(ctx, tk, inst)
}

// releaseStart claims a start ticket and gives it up with a reason, as an
// agent does when a start fails on its host, so that another host may try.
// Tickets this host gave up before are left alone.
func releaseStart(ctx context.Context, sess *registry.HostSession, tk registry.Ticket) error {
	if contains(tk.FailedHosts, sess.ID()) {
		return nil
	}
	if _, err := sess.Claim(ctx, tk); err != nil {
		return err
	}
	return sess.Release(ctx, tk, "artifact missing")
}

// runInstances carries out every open start ticket on host id and fails
// unless there were n.
func runInstances(t *testing.T, r *registry.Registry, id string, n int) *registry.HostSession {
	t.Helper()
	ctx := testContext(t)
	sess := registerHost(t, r, id)
	tickets, err := r.Tickets(ctx)
	if err != nil {
		t.Fatalf("tickets: %v", err)
	}
	done := 0
	for _, tk := range tickets {
		if tk.Op != registry.TicketStart || tk.Holder != "" {
			continue
		}
		if err := carryOut(ctx, sess, tk); err != nil {
			t.Fatalf("carry out ticket %s: %v", tk.ID, err)
		}
		done++
	}
	if done != n {
		t.Fatalf("ran %d instances, want %d", done, n)
	}
	return sess
}

// serveTickets carries out the tickets host sess may claim as they appear,
// until ctx ends; errors are sent on errc. The caller waits for it to return.
func serveTickets(ctx context.Context, r *registry.Registry, sess *registry.HostSession, errc chan<- error,
	handle func(context.Context, *registry.HostSession, registry.Ticket) error) {
	for ev := range r.WatchTickets(ctx, sess.ID()) {
		if ev.Err != nil || ev.Deleted || ev.Ticket.Holder != "" {
			continue
		}
		if err := handle(ctx, sess, ev.Ticket); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("carry out ticket %s: %w", ev.Ticket.ID, err)
			return
		}
	}
}

// serve runs handle for every ticket host h1 may claim until the test
// ends; an error of handle fails the test.
func serve(t *testing.T, h *harness, handle func(context.Context, *registry.HostSession, registry.Ticket) error) *registry.HostSession {
	r := h.registry()
	sess := registerHost(t, r, "h1")
	ctx, cancel := context.WithCancel(testContext(t))
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveTickets(ctx, r, sess, errc, handle)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		select {
		case err := <-errc:
			t.Errorf("agent: %v", err)
		default:
		}
	})
	return sess
}

// lockedBuffer is a bytes.Buffer safe for one writer and a polling reader.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// follower is a CLI invocation that runs until stopped (hosts -w, events -f).
type follower struct {
	t              *testing.T
	stdout, stderr lockedBuffer
	cancel         context.CancelFunc
	done           chan int
	once           sync.Once
	code           int
}

// follow starts the CLI in a goroutine; stop ends it and returns its exit code.
func (h *harness) follow(args ...string) *follower {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{t: h.t, cancel: cancel, done: make(chan int, 1)}
	full := append([]string{"--endpoints", h.ep, "--prefix", h.prefix, "--timeout", "10s"}, args...)
	go func() { f.done <- runContext(ctx, full, strings.NewReader(""), &f.stdout, &f.stderr) }()
	h.t.Cleanup(func() { f.stop() })
	return f
}

// waitOutput waits until stdout contains want, failing after a deadline.
func (f *follower) waitOutput(want string) {
	f.t.Helper()
	proctest.WaitFor(f.t, 20*time.Second, fmt.Sprintf("output %q", want), func() bool {
		return strings.Contains(f.stdout.String(), want)
	})
}

// stop cancels the invocation and returns its exit code; it may be called
// more than once.
func (f *follower) stop() int {
	f.once.Do(func() {
		f.cancel()
		f.code = <-f.done
	})
	return f.code
}

// TestGlobalFlagPrecedence: a global flag's value comes from the command
// line, else from its VISOR_* variable, else from its declared default;
// help never shows the environment's values (it once showed VISOR_TOKEN
// and VISOR_PASSWORD as defaults).
func TestGlobalFlagPrecedence(t *testing.T) {
	h := newHarness(t)
	h.ok("app", "create", "web")
	t.Setenv("VISOR_ENDPOINTS", h.ep)
	t.Setenv("VISOR_PREFIX", h.prefix)
	t.Setenv("VISOR_OUTPUT", "json")
	t.Setenv("VISOR_PASSWORD", "s3cret-from-env")
	t.Setenv("VISOR_TOKEN", "t0ken-from-env")
	res := runCLI("app", "list")
	var list []map[string]any
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &list) != nil || len(list) != 1 {
		t.Fatalf("app list from VISOR_ENDPOINTS, VISOR_PREFIX, VISOR_OUTPUT=json: exit %d, %q, %q", res.code, res.stdout, res.stderr)
	}
	if res := runCLI("app", "list", "-o", "text"); res.code != 0 || !strings.HasPrefix(res.stdout, "NAME") {
		t.Errorf("-o text over VISOR_OUTPUT=json: exit %d, %q", res.code, res.stdout)
	}
	if res := runCLI("--prefix", "/elsewhere/", "app", "list"); res.code != 0 || strings.TrimSpace(res.stdout) != "[]" {
		t.Errorf("--prefix over VISOR_PREFIX: exit %d, %q, %q", res.code, res.stdout, res.stderr)
	}
	for _, args := range [][]string{{"--help"}, {"logs", "--help"}, {"agent", "--help"}} {
		if res := runCLI(args...); strings.Contains(res.stdout, "from-env") {
			t.Errorf("visor %s shows a value from the environment:\n%s", strings.Join(args, " "), res.stdout)
		}
	}
	t.Setenv("VISOR_OUTPUT", "yaml")
	checkFailure(t, runCLI("app", "list"), exitUsage, []string{"--output", `"yaml"`}, []string{"app", "list"})
}
