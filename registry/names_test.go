package registry

import (
	"errors"
	"strings"
	"testing"
)

// TestServiceNamesCannotCollide: the service of a process type is
// "<app>.<proc>", so app "a.b" with proc "web" and app "a" with proc
// "b.web" were both "a.b.web" and `visor lookup a.b.web` answered with
// both apps' endpoints (issue 17, item 4). Both halves of the pair are now
// refused at registration, naming the problem; a legacy record holding
// such a name is a bad record that `visor doctor` lists, and the app can
// still be deleted by its name so it can be recreated under a new one.
func TestServiceNamesCannotCollide(t *testing.T) {
	r, cli, _ := setup(t)
	ctx := testCtx(t)

	_, err := r.RegisterApp(ctx, App{Name: "a.b"})
	mustIs(t, err, ErrInvalid)
	if !strings.Contains(err.Error(), `app name "a.b" contains "."`) {
		t.Fatalf("register app a.b: %v; want an error naming the dot", err)
	}
	seed(t, r, "a", "v1", "web")
	_, err = r.SetProcType(ctx, ProcType{App: "a", Name: "b.web", Command: "sleep 1"})
	mustIs(t, err, ErrInvalid)
	if !strings.Contains(err.Error(), `process type "b.web" contains "."`) {
		t.Fatalf("set proc b.web: %v; want an error naming the dot", err)
	}

	for _, tc := range []struct{ app, proc, want string }{
		{"web-", "web", `app name "web-" ends with "-"`},
		{"ok", "web-", `process type "web-" ends with "-"`},
		{strings.Repeat("a", 64), "web", "more than 63"},
		{"ok", strings.Repeat("w", 64), "more than 63"},
		{"-a", "web", "must match"},
		{"A", "web", "must match"},
		{"ok", "we_b", "must match"},
	} {
		err := validProcType(&ProcType{App: tc.app, Name: tc.proc})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("proc %q of app %q: %v; want ErrInvalid naming %q", tc.proc, tc.app, err, tc.want)
		}
	}
	for _, ok := range [][2]string{{"a", "web"}, {"a-b", "web-2"}, {strings.Repeat("a", 63), "0"}} {
		if err := validProcType(&ProcType{App: ok[0], Name: ok[1]}); err != nil {
			t.Errorf("proc %q of app %q refused: %v", ok[1], ok[0], err)
		}
	}

	// A registry written before the rule: both halves of the pair exist.
	_, err = cli.Put(ctx, r.appKey("a.b"), `{"name":"a.b"}`)
	must(t, err)
	_, err = cli.Put(ctx, r.procKey("a", "b.web"), `{"command":"sleep 1"}`)
	must(t, err)
	bad, err := r.Check(ctx)
	must(t, err)
	want := map[string]string{
		r.appKey("a.b"):         `app name "a.b" contains "."`,
		r.procKey("a", "b.web"): `process type "b.web" contains "."`,
	}
	for _, b := range bad {
		if w, ok := want[b.Key]; ok && strings.Contains(b.Err.Error(), w) {
			delete(want, b.Key)
		}
	}
	if len(want) != 0 {
		t.Fatalf("doctor's check = %v; missing %v", bad, want)
	}
	if _, err := r.App(ctx, "a.b"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("app a.b: %v; want a bad record", err)
	}
	// The way out: delete the legacy app by its name, recreate it as a-b.
	must(t, r.UnregisterApp(ctx, "a.b", true))
	must(t, r.RemoveProcType(ctx, "a", "b.web"))
	if _, err := r.RegisterApp(ctx, App{Name: "a-b"}); err != nil {
		t.Fatal(err)
	}
}
