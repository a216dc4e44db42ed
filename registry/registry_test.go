package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/visorhq/visor/internal/etcdtest"
	"github.com/visorhq/visor/internal/testtime"
)

func TestMain(m *testing.M) {
	if host := os.Getenv(claimerEnv); host != "" {
		os.Exit(claimerMain(host))
	}
	goleak.VerifyTestMain(etcdtest.WithShared(m))
}

// logWriter routes hclog output to t.Log until the test ends.
type logWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t testing.TB) hclog.Logger {
	w := &logWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return hclog.New(&hclog.LoggerOptions{Name: "test", Output: w, Level: hclog.Debug})
}

// setup returns a registry under a fresh prefix on the package's shared
// embedded etcd, plus a raw client for checks behind the registry's back.
func setup(t testing.TB) (*Registry, *clientv3.Client, *etcdtest.Cluster) {
	t.Helper()
	return setupOn(t, etcdtest.Shared(t))
}

// setupOwn is setup on an etcd member of the test's own, for a test that
// does what would disturb others (compaction).
func setupOwn(t testing.TB) (*Registry, *clientv3.Client, *etcdtest.Cluster) {
	t.Helper()
	return setupOn(t, etcdtest.New(t))
}

func setupOn(t testing.TB, c *etcdtest.Cluster) (*Registry, *clientv3.Client, *etcdtest.Cluster) {
	t.Helper()
	cli := c.Client(t)
	return New(cli, etcdtest.Prefix(t), testLogger(t)), cli, c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(2*time.Minute))
	t.Cleanup(cancel)
	return ctx
}

// seed registers app/rev/proc.
func seed(t testing.TB, r *Registry, app, rev, proc string) {
	t.Helper()
	ctx := testCtx(t)
	if _, err := r.App(ctx, app); errors.Is(err, ErrNotFound) {
		if _, err := r.RegisterApp(ctx, App{Name: app, RepoURL: "https://example.com/" + app + ".git", Stack: "go"}); err != nil {
			t.Fatalf("register app: %v", err)
		}
	}
	if _, err := r.Revision(ctx, app, rev); errors.Is(err, ErrNotFound) {
		if _, err := r.RegisterRevision(ctx, Revision{App: app, Name: rev, Dir: "/srv/" + app}); err != nil {
			t.Fatalf("register revision: %v", err)
		}
	}
	if _, err := r.SetProcType(ctx, ProcType{App: app, Name: proc, Command: "sleep 1000"}); err != nil {
		t.Fatalf("set proc: %v", err)
	}
}

// keyCount counts the keys under the registry prefix.
func keyCount(t testing.TB, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := cli.Get(testCtx(t), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count keys: %v", err)
	}
	return resp.Count
}

func mustIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDial(t *testing.T) {
	t.Parallel()
	c := etcdtest.New(t)
	ctx := testCtx(t)
	r, err := Dial(ctx, Config{Endpoints: c.Endpoints(), Logger: testLogger(t)})
	must(t, err)
	if r.Prefix() != DefaultPrefix {
		t.Errorf("prefix = %q, want %q", r.Prefix(), DefaultPrefix)
	}
	if _, err := r.RegisterApp(ctx, App{Name: "dialed"}); err != nil {
		t.Fatal(err)
	}
	must(t, r.Close())

	// New wraps a client without taking it over.
	cli := c.Client(t)
	w := New(cli, "", nil)
	must(t, w.Close())
	if w.Client() != cli {
		t.Error("Client() is not the wrapped client")
	}
	if _, err := w.App(ctx, "dialed"); err != nil {
		t.Errorf("wrapped client closed by Close: %v", err)
	}

	r2, err := Dial(ctx, Config{Endpoints: c.Endpoints(), Prefix: "/other"})
	must(t, err)
	defer r2.Close()
	if r2.Prefix() != "/other/" {
		t.Errorf("prefix = %q, want /other/", r2.Prefix())
	}
	if _, err := r2.App(ctx, "dialed"); !errors.Is(err, ErrNotFound) {
		t.Errorf("app under another prefix: %v, want ErrNotFound", err)
	}

	t.Run("unreachable", func(t *testing.T) {
		_, err := Dial(ctx, Config{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: 300 * time.Millisecond})
		if err == nil {
			t.Fatal("dial of a closed port succeeded")
		}
	})
	t.Run("no endpoints", func(t *testing.T) {
		_, err := Dial(ctx, Config{})
		mustIs(t, err, ErrInvalid)
	})
}

func TestApps(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	a, err := r.RegisterApp(ctx, App{Name: "web", RepoURL: "git@example.com:web.git", Stack: "ruby"})
	must(t, err)
	if a.ModRevision == 0 || a.Created.IsZero() {
		t.Errorf("registered app lacks revision or created: %+v", a)
	}
	_, err = r.RegisterApp(ctx, App{Name: "web"})
	mustIs(t, err, ErrExists)
	_, err = r.RegisterApp(ctx, App{Name: "api"})
	must(t, err)

	apps, err := r.Apps(ctx)
	must(t, err)
	if len(apps) != 2 || apps[0].Name != "api" || apps[1].Name != "web" || apps[1].Stack != "ruby" {
		t.Fatalf("apps = %+v", apps)
	}
	got, err := r.App(ctx, "web")
	must(t, err)
	if got.RepoURL != a.RepoURL || !got.Created.Equal(a.Created) {
		t.Errorf("app = %+v, want %+v", got, a)
	}
	_, err = r.App(ctx, "nope")
	mustIs(t, err, ErrNotFound)

	// Child records do not show up as apps, and unregistering removes them.
	seed(t, r, "web", "v1", "worker")
	must(t, r.SetEnv(ctx, "web", map[string]string{"A": "1"}))
	if _, err := r.Scale(ctx, "web", "v1", "worker", 1); err != nil {
		t.Fatal(err)
	}
	apps, err = r.Apps(ctx)
	must(t, err)
	if len(apps) != 2 {
		t.Fatalf("apps with children = %+v", apps)
	}

	// A pending instance is live: unregister refuses without force.
	err = r.UnregisterApp(ctx, "web", false)
	mustIs(t, err, ErrInUse)
	must(t, r.UnregisterApp(ctx, "web", true))
	_, err = r.App(ctx, "web")
	mustIs(t, err, ErrNotFound)
	if _, err := r.Revisions(ctx, "web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revisions after unregister: %v", err)
	}
	resp, err := r.Client().Get(ctx, r.appDir("web"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	must(t, err)
	if resp.Count != 0 {
		t.Errorf("%d keys left under the app", resp.Count)
	}
	must(t, r.UnregisterApp(ctx, "api", false))
	mustIs(t, r.UnregisterApp(ctx, "api", false), ErrNotFound)
}

func TestEnv(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	_, err := r.RegisterApp(ctx, App{Name: "web"})
	must(t, err)
	must(t, r.SetEnv(ctx, "web", map[string]string{"PORT_BASE": "8000", "DATABASE_URL": "postgres://db/x", "EMPTY": ""}))
	env, err := r.Env(ctx, "web")
	must(t, err)
	if len(env) != 3 || env["PORT_BASE"] != "8000" || env["DATABASE_URL"] != "postgres://db/x" {
		t.Fatalf("env = %v", env)
	}
	v, err := r.EnvVar(ctx, "web", "DATABASE_URL")
	must(t, err)
	if v != "postgres://db/x" {
		t.Errorf("env var = %q", v)
	}
	must(t, r.UnsetEnv(ctx, "web", "PORT_BASE", "NEVER_SET"))
	_, err = r.EnvVar(ctx, "web", "PORT_BASE")
	mustIs(t, err, ErrNotFound)
	env, err = r.Env(ctx, "web")
	must(t, err)
	if len(env) != 2 {
		t.Errorf("env after unset = %v", env)
	}
	mustIs(t, r.SetEnv(ctx, "nope", map[string]string{"A": "1"}), ErrNotFound)
	_, err = r.Env(ctx, "nope")
	mustIs(t, err, ErrNotFound)
	mustIs(t, r.SetEnv(ctx, "web", map[string]string{"BAD-KEY": "1"}), ErrInvalid)
	mustIs(t, r.UnsetEnv(ctx, "web", "1X"), ErrInvalid)
}

const goodSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestRevisions(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	_, err := r.RegisterApp(ctx, App{Name: "web"})
	must(t, err)
	art, err := r.RegisterRevision(ctx, Revision{App: "web", Name: "v1", ArtifactURL: "https://example.com/web-v1.tar.gz", SHA256: strings.ToUpper(goodSHA)})
	must(t, err)
	if art.SHA256 != goodSHA {
		t.Errorf("sha not normalised: %q", art.SHA256)
	}
	_, err = r.RegisterRevision(ctx, Revision{App: "web", Name: "v2", Dir: "/srv/web/v2"})
	must(t, err)
	_, err = r.RegisterRevision(ctx, Revision{App: "web", Name: "v2", Dir: "/srv/web/v2"})
	mustIs(t, err, ErrExists)
	_, err = r.RegisterRevision(ctx, Revision{App: "nope", Name: "v1", Dir: "/srv"})
	mustIs(t, err, ErrNotFound)

	revs, err := r.Revisions(ctx, "web")
	must(t, err)
	if len(revs) != 2 || revs[0].Name != "v1" || revs[0].ArtifactURL == "" || revs[1].Dir != "/srv/web/v2" {
		t.Fatalf("revisions = %+v", revs)
	}
	got, err := r.Revision(ctx, "web", "v1")
	must(t, err)
	if got.SHA256 != goodSHA || got.App != "web" {
		t.Errorf("revision = %+v", got)
	}

	for name, rv := range map[string]Revision{
		"neither":      {App: "web", Name: "x"},
		"both":         {App: "web", Name: "x", Dir: "/srv", ArtifactURL: "file:///a.tgz", SHA256: goodSHA},
		"bad scheme":   {App: "web", Name: "x", ArtifactURL: "ftp://h/a.tgz", SHA256: goodSHA},
		"no sha":       {App: "web", Name: "x", ArtifactURL: "file:///a.tgz"},
		"short sha":    {App: "web", Name: "x", ArtifactURL: "file:///a.tgz", SHA256: "abc"},
		"non-hex sha":  {App: "web", Name: "x", ArtifactURL: "file:///a.tgz", SHA256: strings.Repeat("g", 64)},
		"relative dir": {App: "web", Name: "x", Dir: "srv/web"},
		"dotdot dir":   {App: "web", Name: "x", Dir: "/srv/../etc"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := r.RegisterRevision(ctx, rv)
			mustIs(t, err, ErrInvalid)
		})
	}

	seed(t, r, "web", "v2", "worker")
	_, err = r.Scale(ctx, "web", "v2", "worker", 1)
	must(t, err)
	mustIs(t, r.UnregisterRevision(ctx, "web", "v2"), ErrInUse)
	must(t, r.UnregisterRevision(ctx, "web", "v1"))
	mustIs(t, r.UnregisterRevision(ctx, "web", "v1"), ErrNotFound)
	_, err = r.Revision(ctx, "web", "v1")
	mustIs(t, err, ErrNotFound)
}

func TestProcTypes(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	_, err := r.RegisterApp(ctx, App{Name: "web"})
	must(t, err)
	p := ProcType{
		App: "web", Name: "http", Command: "bin/server --port $PORT",
		Env:         map[string]string{"MODE": "prod"},
		Restart:     RestartPolicy{Policy: "on-failure", InitialDelay: Duration(time.Second), MaxDelay: Duration(time.Minute), ResetAfter: Duration(10 * time.Minute), MaxRestarts: 5},
		StopSignal:  "SIGINT",
		StopTimeout: Duration(30 * time.Second),
		MinUptime:   Duration(1500 * time.Millisecond),
		Health:      &HealthCheck{Type: "http", Path: "/healthz", Period: Duration(5 * time.Second), Timeout: Duration(time.Second), FailureThreshold: 3},
		Limits:      Limits{MemoryBytes: 256 << 20, CPUMillis: 500, Pids: 64},
		User:        "www-data", Group: "www-data",
	}
	got, err := r.SetProcType(ctx, p)
	must(t, err)
	if got.StopSignal != "INT" {
		t.Errorf("stop signal not normalised: %q", got.StopSignal)
	}
	for _, sig := range []string{"SIGSTOP", "tstp", "CONT", "SIGBOGUS"} {
		bad := p
		bad.StopSignal = sig
		_, err := r.SetProcType(ctx, bad)
		mustIs(t, err, ErrInvalid)
	}
	_, err = r.SetProcType(ctx, ProcType{App: "web", Name: "worker"})
	must(t, err)
	procs, err := r.ProcTypes(ctx, "web")
	must(t, err)
	if len(procs) != 2 || procs[0].Name != "http" || procs[1].Name != "worker" {
		t.Fatalf("procs = %+v", procs)
	}
	one, err := r.ProcType(ctx, "web", "http")
	must(t, err)
	if one.Health == nil || one.Health.Path != "/healthz" || one.Restart.MaxDelay != Duration(time.Minute) ||
		one.Limits != p.Limits || one.MinUptime != p.MinUptime || one.Env["MODE"] != "prod" {
		t.Errorf("proc = %+v", one)
	}
	// Replace.
	p.Command = "bin/server2"
	_, err = r.SetProcType(ctx, p)
	must(t, err)
	one, err = r.ProcType(ctx, "web", "http")
	must(t, err)
	if one.Command != "bin/server2" {
		t.Errorf("command = %q", one.Command)
	}
	_, err = r.SetProcType(ctx, ProcType{App: "nope", Name: "x"})
	mustIs(t, err, ErrNotFound)

	bad := map[string]ProcType{
		"policy":        {Restart: RestartPolicy{Policy: "sometimes"}},
		"neg delay":     {Restart: RestartPolicy{InitialDelay: -1}},
		"neg restarts":  {Restart: RestartPolicy{MaxRestarts: -1}},
		"signal":        {StopSignal: "SIGFOO"},
		"health type":   {Health: &HealthCheck{Type: "udp"}},
		"exec no cmd":   {Health: &HealthCheck{Type: "exec"}},
		"http path":     {Health: &HealthCheck{Type: "http", Path: "healthz"}},
		"neg limits":    {Limits: Limits{MemoryBytes: -1}},
		"user":          {User: "root;rm"},
		"env key":       {Env: map[string]string{"A B": "x"}},
		"neg stop time": {StopTimeout: -1},
	}
	for name, bp := range bad {
		t.Run(name, func(t *testing.T) {
			bp.App, bp.Name = "web", "bad"
			_, err := r.SetProcType(ctx, bp)
			mustIs(t, err, ErrInvalid)
		})
	}

	seed(t, r, "web", "v1", "worker")
	_, err = r.Scale(ctx, "web", "v1", "worker", 1)
	must(t, err)
	mustIs(t, r.RemoveProcType(ctx, "web", "worker"), ErrInUse)
	_, err = r.Scale(ctx, "web", "v1", "http", 0)
	must(t, err)
	must(t, r.RemoveProcType(ctx, "web", "http"))
	mustIs(t, r.RemoveProcType(ctx, "web", "http"), ErrNotFound)
	scales, err := r.Scales(ctx, "web")
	must(t, err)
	if len(scales) != 1 || scales[0].Proc != "worker" {
		t.Errorf("scales after removing http = %+v", scales)
	}
}

func TestDurationJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(RestartPolicy{InitialDelay: Duration(1500 * time.Millisecond)})
	must(t, err)
	if !strings.Contains(string(b), `"initial_delay":"1.5s"`) {
		t.Errorf("encoded = %s", b)
	}
	var rp RestartPolicy
	must(t, json.Unmarshal([]byte(`{"initial_delay":"2m","max_delay":1000}`), &rp))
	if rp.InitialDelay != Duration(2*time.Minute) || rp.MaxDelay != 1000 {
		t.Errorf("decoded = %+v", rp)
	}
	if err := json.Unmarshal([]byte(`{"initial_delay":"soon"}`), &rp); err == nil {
		t.Error("bad duration decoded")
	}
	if Duration(90*time.Second).String() != "1m30s" {
		t.Errorf("String = %s", Duration(90*time.Second))
	}
}

func TestValidTransition(t *testing.T) {
	t.Parallel()
	cases := []struct {
		from, to InstanceState
		ok       bool
	}{
		{InstancePending, InstanceClaimed, true},
		{InstanceClaimed, InstanceStarting, true},
		{InstanceStarting, InstanceRunning, true},
		{InstanceRunning, InstanceBackoff, true},
		{InstanceBackoff, InstanceRunning, true},
		{InstanceRunning, InstanceStopping, true},
		{InstanceStopping, InstanceExited, true},
		{InstanceRunning, InstanceRunning, true},
		{InstanceRunning, InstanceLost, true},
		{InstancePending, InstanceLost, true},
		{InstanceStarting, InstanceFailed, true},
		{InstancePending, InstanceRunning, false},
		{InstanceStopping, InstanceRunning, false},
		{InstanceExited, InstanceRunning, false},
		{InstanceLost, InstanceRunning, false},
		{InstanceFailed, InstanceFailed, false},
		{InstanceRunning, InstancePending, false},
		{InstanceClaimed, InstancePending, true},  // a release of a start that never ran
		{InstanceStarting, InstanceClaimed, true}, // a claim over a dead holder's start
		{InstanceStarting, InstancePending, false},
		{InstanceBackoff, InstancePending, false},
		{InstanceRunning, InstanceClaimed, false},
		{InstanceRunning, "dancing", false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s-%s", c.from, c.to), func(t *testing.T) {
			err := ValidTransition(c.from, c.to)
			if (err == nil) != c.ok {
				t.Fatalf("ValidTransition = %v, want ok=%v", err, c.ok)
			}
			if err != nil {
				mustIs(t, err, ErrTransition)
				want := fmt.Sprintf("invalid state transition %q to %q", c.from, c.to)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
	if !InstanceLost.Terminal() || InstanceRunning.Terminal() || InstanceStopping.Live() || !InstancePending.Live() {
		t.Error("Terminal/Live wrong")
	}
}
