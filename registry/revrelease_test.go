package registry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// seedRelease registers app demo with process types web and worker, env
// A and B, and the draft revision v1.
func seedRelease(t *testing.T, r *Registry) {
	t.Helper()
	ctx := testCtx(t)
	_, err := r.RegisterApp(ctx, App{Name: "demo"})
	must(t, err)
	_, err = r.RegisterRevision(ctx, Revision{App: "demo", Name: "v1", Dir: "/srv/demo"})
	must(t, err)
	_, err = r.SetProcType(ctx, ProcType{App: "demo", Name: "web", Command: "serve v1",
		Limits: Limits{MemoryBytes: 64 << 20}, Health: &HealthCheck{Type: CheckTCP}})
	must(t, err)
	_, err = r.SetProcType(ctx, ProcType{App: "demo", Name: "worker", Command: "work v1", StopSignal: "INT"})
	must(t, err)
	must(t, r.SetEnv(ctx, "demo", map[string]string{"A": "1", "B": "2"}))
}

// TestReleaseSnapshotInScaleTxn: the first Scale of a revision writes its
// release (every process type of the app and its env) in the transaction
// that writes the count and the start tickets.
func TestReleaseSnapshotInScaleTxn(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seedRelease(t, r)

	rv, err := r.Revision(ctx, "demo", "v1")
	must(t, err)
	if rv.Released() {
		t.Fatalf("a registered revision is released: %+v", rv.Release)
	}
	res, err := r.Scale(ctx, "demo", "v1", "web", 1)
	must(t, err)
	if !res.Released || len(res.Started) != 1 {
		t.Fatalf("first scale = %+v, want released with one start", res)
	}
	rv, err = r.Revision(ctx, "demo", "v1")
	must(t, err)
	if !rv.Released() {
		t.Fatal("revision not released by its first scale")
	}
	sk, err := cli.Get(ctx, r.scaleKey("demo", "v1", "web"))
	must(t, err)
	tk, err := cli.Get(ctx, r.ticketKey(res.Started[0]))
	must(t, err)
	if rv.ModRevision != sk.Kvs[0].ModRevision || rv.ModRevision != tk.Kvs[0].CreateRevision {
		t.Errorf("release at revision %d, scale key at %d, ticket at %d: not one transaction",
			rv.ModRevision, sk.Kvs[0].ModRevision, tk.Kvs[0].CreateRevision)
	}
	rl := rv.Release
	if len(rl.Procs) != 2 || rl.Procs["web"].Command != "serve v1" || rl.Procs["worker"].Command != "work v1" ||
		rl.Procs["worker"].StopSignal != "INT" || rl.Procs["web"].Health == nil || rl.Procs["web"].Limits.MemoryBytes != 64<<20 {
		t.Errorf("release procs = %+v", rl.Procs)
	}
	if rl.Env["A"] != "1" || rl.Env["B"] != "2" || len(rl.Env) != 2 || rl.Released.IsZero() {
		t.Errorf("release env = %v at %v", rl.Env, rl.Released)
	}
	ticket, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	if ticket.Reserve == nil || ticket.Reserve.MemoryBytes != 64<<20 {
		t.Errorf("ticket reserve = %+v, want the release's 64 MiB", ticket.Reserve)
	}
}

// TestReleaseImmutable: once released, a revision runs its own process
// types and env; changes of the app's reach the next release only.
func TestReleaseImmutable(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seedRelease(t, r)
	_, err := r.Scale(ctx, "demo", "v1", "web", 1)
	must(t, err)
	v1, err := r.Revision(ctx, "demo", "v1")
	must(t, err)

	_, err = r.SetProcType(ctx, ProcType{App: "demo", Name: "web", Command: "serve v2", Limits: Limits{MemoryBytes: 128 << 20}})
	must(t, err)
	must(t, r.SetEnv(ctx, "demo", map[string]string{"A": "9", "C": "3"}))
	must(t, r.UnsetEnv(ctx, "demo", "B"))

	l, err := r.Launch(ctx, "demo", "v1", "web")
	must(t, err)
	if l.ProcType.Command != "serve v1" || l.ProcType.Health == nil || l.Env["A"] != "1" || l.Env["B"] != "2" || l.Env["C"] != "" {
		t.Errorf("launch of released v1 = %+v env %v, want its release", l.ProcType, l.Env)
	}
	// More scales of v1 leave its release alone and reserve what it says.
	res, err := r.Scale(ctx, "demo", "v1", "web", 2)
	must(t, err)
	if res.Released {
		t.Error("a second scale released v1 again")
	}
	tk, err := r.Ticket(ctx, res.Started[0])
	must(t, err)
	if tk.Reserve == nil || tk.Reserve.MemoryBytes != 64<<20 {
		t.Errorf("reserve of v1's new ticket = %+v, want its release's 64 MiB", tk.Reserve)
	}
	after, err := r.Revision(ctx, "demo", "v1")
	must(t, err)
	if after.ModRevision != v1.ModRevision {
		t.Errorf("v1's record was rewritten (mod %d -> %d)", v1.ModRevision, after.ModRevision)
	}
	again, err := r.ReleaseRevision(ctx, "demo", "v1")
	must(t, err)
	if again.ModRevision != v1.ModRevision || again.Release.Procs["web"].Command != "serve v1" {
		t.Errorf("ReleaseRevision of a released revision = %+v", again)
	}
	// A RegisterRevision cannot bring its own release.
	_, err = r.RegisterRevision(ctx, Revision{App: "demo", Name: "v9", Dir: "/srv/demo", Release: v1.Release})
	must(t, err)
	if v9, _ := r.Revision(ctx, "demo", "v9"); v9.Released() {
		t.Error("RegisterRevision stored the release it was given")
	}

	// The next revision is released with the app's configuration of then.
	v2, err := r.RegisterRevisionFrom(ctx, "demo", "v2", "v1")
	must(t, err)
	if v2.Dir != "/srv/demo" || v2.Released() {
		t.Fatalf("v2 from v1 = %+v", v2)
	}
	_, err = r.Scale(ctx, "demo", "v2", "web", 1)
	must(t, err)
	l2, err := r.Launch(ctx, "demo", "v2", "web")
	must(t, err)
	if l2.ProcType.Command != "serve v2" || l2.Env["A"] != "9" || l2.Env["C"] != "3" || l2.Env["B"] != "" {
		t.Errorf("launch of v2 = %+v env %v, want the app's current configuration", l2.ProcType, l2.Env)
	}
	l, err = r.Launch(ctx, "demo", "v1", "web")
	must(t, err)
	if l.ProcType.Command != "serve v1" {
		t.Errorf("v1 after v2's release runs %q", l.ProcType.Command)
	}
}

// TestReleaseMissingProc: a released revision cannot scale or start a
// process type its release lacks, even when the app has it now.
func TestReleaseMissingProc(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seedRelease(t, r)
	_, err := r.Scale(ctx, "demo", "v1", "web", 1)
	must(t, err)
	_, err = r.SetProcType(ctx, ProcType{App: "demo", Name: "clock", Command: "tick"})
	must(t, err)

	_, err = r.Scale(ctx, "demo", "v1", "clock", 1)
	mustIs(t, err, ErrNotFound)
	if msg := err.Error(); !strings.Contains(msg, "revision v1 of app demo has no process type clock") ||
		!strings.Contains(msg, "released before clock was added") || !strings.Contains(msg, "register a new revision") {
		t.Errorf("error = %q", msg)
	}
	if resp, _ := cli.Get(ctx, r.scaleKey("demo", "v1", "clock")); len(resp.Kvs) != 0 {
		t.Error("the refused scale wrote its key")
	}
	_, err = r.Launch(ctx, "demo", "v1", "clock")
	mustIs(t, err, ErrNotFound)
	_, err = r.Scale(ctx, "demo", "v1", "nope", 1)
	mustIs(t, err, ErrNotFound)
	if !strings.Contains(err.Error(), "has no process type nope (it has web, worker)") {
		t.Errorf("error = %q", err)
	}
	// A process type removed from the app stays in the release.
	must(t, r.RemoveProcType(ctx, "demo", "worker"))
	res, err := r.Scale(ctx, "demo", "v1", "worker", 1)
	must(t, err)
	if len(res.Started) != 1 {
		t.Errorf("scale of the release's worker = %+v", res)
	}
	l, err := r.Launch(ctx, "demo", "v1", "worker")
	must(t, err)
	if l.ProcType.Command != "work v1" {
		t.Errorf("launch of the release's worker = %+v", l.ProcType)
	}
	if n, err := r.CurrentScale(ctx, "demo", "v1", "worker"); err != nil || n != 1 {
		t.Errorf("current scale of the release's worker = %d, %v", n, err)
	}
	_, err = r.CurrentScale(ctx, "demo", "v1", "clock")
	mustIs(t, err, ErrNotFound)
}

// TestReleaseMigration: a revision record of a Visor older than releases
// (no release) keeps starting from the app's process types and env, also
// when the reconciler re-applies its scale, until its next Scale
// releases it.
func TestReleaseMigration(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seedRelease(t, r)
	// The record as the older Visor wrote it, and its scale.
	old := `{"app":"demo","name":"v0","dir":"/srv/demo","created":"2026-01-02T03:04:05Z"}`
	_, err := cli.Put(ctx, r.revKey("demo", "v0"), old)
	must(t, err)
	_, err = cli.Put(ctx, r.scaleKey("demo", "v0", "web"), "2")
	must(t, err)
	bad, err := r.Check(ctx)
	must(t, err)
	if len(bad) != 0 {
		t.Errorf("check of an old-format revision = %v", bad)
	}

	launchCmd := func() string {
		t.Helper()
		l, err := r.Launch(ctx, "demo", "v0", "web")
		must(t, err)
		return l.ProcType.Command + " A=" + l.Env["A"]
	}
	if got := launchCmd(); got != "serve v1 A=1" {
		t.Errorf("old revision launches %q, want the app's", got)
	}
	_, err = r.SetProcType(ctx, ProcType{App: "demo", Name: "web", Command: "serve v2"})
	must(t, err)
	must(t, r.SetEnv(ctx, "demo", map[string]string{"A": "7"}))
	if got := launchCmd(); got != "serve v2 A=7" {
		t.Errorf("old revision launches %q after proc set, want the app's (today's behaviour)", got)
	}
	// The reconciler's Rescale writes the drift's tickets, not a release.
	res, err := r.Rescale(ctx, "demo", "v0", "web")
	must(t, err)
	if len(res.Started) != 2 || res.Released {
		t.Errorf("rescale of the old revision = %+v", res)
	}
	if rv, _ := r.Revision(ctx, "demo", "v0"); rv.Released() {
		t.Fatal("Rescale released an old revision")
	}
	// Its next Scale releases it.
	res, err = r.Scale(ctx, "demo", "v0", "web", 3)
	must(t, err)
	if !res.Released {
		t.Errorf("scale of the old revision = %+v, want released", res)
	}
	_, err = r.SetProcType(ctx, ProcType{App: "demo", Name: "web", Command: "serve v3"})
	must(t, err)
	if got := launchCmd(); got != "serve v2 A=7" {
		t.Errorf("released old revision launches %q, want its release", got)
	}
	rv, err := r.Revision(ctx, "demo", "v0")
	must(t, err)
	if rv.Created.Year() != 2026 || rv.Dir != "/srv/demo" {
		t.Errorf("release lost the record's fields: %+v", rv)
	}

	// A release that does not check out makes the record a bad one.
	_, err = cli.Put(ctx, r.revKey("demo", "vbad"),
		`{"dir":"/srv/demo","release":{"released":"2026-01-02T03:04:05Z","procs":{"web":{"restart":{"policy":"sometimes"},"limits":{}}}}}`)
	must(t, err)
	bad, err = r.Check(ctx)
	must(t, err)
	if len(bad) != 1 || bad[0].Kind != KindRevision || !strings.Contains(bad[0].Error(), "restart policy") {
		t.Errorf("check = %v, want the bad release", bad)
	}
}

// TestReleaseConcurrentProcSet: process types and env written while
// revisions are first scaled never give a torn release: each release is
// the app's configuration exactly as it was at the release's revision.
func TestReleaseConcurrentProcSet(t *testing.T) {
	t.Parallel()
	r, cli, _ := setup(t)
	ctx := testCtx(t)
	seedRelease(t, r)
	const revs = 12
	for i := range revs {
		_, err := r.RegisterRevision(ctx, Revision{App: "demo", Name: fmt.Sprintf("r%d", i), Dir: "/srv/demo"})
		must(t, err)
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() { // the writer: proc set, env set, proc remove, over and over
		defer wg.Done()
		for i := 0; wctx.Err() == nil; i++ {
			g := strconv.Itoa(i)
			var err error
			switch i % 3 {
			case 0:
				_, err = r.SetProcType(wctx, ProcType{App: "demo", Name: "worker", Command: "work " + g})
			case 1:
				err = r.SetEnv(wctx, "demo", map[string]string{"GEN": g, "GEN2": g})
			case 2:
				if i%2 == 0 {
					_, err = r.SetProcType(wctx, ProcType{App: "demo", Name: "extra", Command: "x " + g})
				} else {
					err = r.RemoveProcType(wctx, "demo", "extra")
					if errors.Is(err, ErrNotFound) {
						err = nil
					}
				}
			}
			if err != nil && wctx.Err() == nil {
				werr = err
				return
			}
		}
	}()
	var serr error
	var mu sync.Mutex
	var sw sync.WaitGroup
	for g := range 2 {
		sw.Add(1)
		go func() {
			defer sw.Done()
			for i := g; i < revs; i += 2 {
				if _, err := r.Scale(ctx, "demo", fmt.Sprintf("r%d", i), "web", 1); err != nil {
					mu.Lock()
					serr = err
					mu.Unlock()
				}
			}
		}()
	}
	sw.Wait()
	stop()
	wg.Wait()
	must(t, werr)
	must(t, serr)

	for i := range revs {
		rv, err := r.Revision(ctx, "demo", fmt.Sprintf("r%d", i))
		must(t, err)
		if !rv.Released() {
			t.Fatalf("r%d not released", i)
		}
		// The app's configuration at the release's own revision.
		procs, err := cli.Get(ctx, r.procDir("demo"), clientv3.WithPrefix(), clientv3.WithRev(rv.ModRevision))
		must(t, err)
		env, err := cli.Get(ctx, r.envDir("demo"), clientv3.WithPrefix(), clientv3.WithRev(rv.ModRevision))
		must(t, err)
		want := map[string]string{}
		for _, kv := range procs.Kvs {
			p, err := decodeProc(kv.Key, kv.Value, 0, "demo", strings.TrimPrefix(string(kv.Key), r.procDir("demo")))
			must(t, err)
			want["proc "+p.Name] = p.Command
		}
		for _, kv := range env.Kvs {
			want["env "+strings.TrimPrefix(string(kv.Key), r.envDir("demo"))] = string(kv.Value)
		}
		got := map[string]string{}
		for name, p := range rv.Release.Procs {
			got["proc "+name] = p.Command
		}
		for k, v := range rv.Release.Env {
			got["env "+k] = v
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("r%d: release %v\n the app's configuration at its revision %d: %v", i, got, rv.ModRevision, want)
		}
		if got["env GEN"] != got["env GEN2"] {
			t.Errorf("r%d: torn env GEN=%s GEN2=%s", i, got["env GEN"], got["env GEN2"])
		}
	}
}
