package registry

import (
	"strings"
	"testing"
)

func TestLaunch(t *testing.T) {
	t.Parallel()
	r, _, _ := setup(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")
	must(t, r.SetEnv(ctx, "web", map[string]string{"A": "1", "B": "2"}))

	l, err := r.Launch(ctx, "web", "v1", "worker")
	must(t, err)
	if l.Revision.Name != "v1" || l.Revision.Dir != "/srv/web" || l.ProcType.Command != "sleep 1000" ||
		len(l.Env) != 2 || l.Env["A"] != "1" {
		t.Fatalf("Launch = %+v", l)
	}
	for _, tc := range []struct{ app, rev, proc, want string }{
		{"nope", "v1", "worker", `app "nope"`},
		{"web", "v9", "worker", `revision "v9"`},
		{"web", "v1", "cron", `process type "cron"`},
	} {
		_, err := r.Launch(ctx, tc.app, tc.rev, tc.proc)
		mustIs(t, err, ErrNotFound)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Launch(%s,%s,%s) = %v, want it to name %s", tc.app, tc.rev, tc.proc, err, tc.want)
		}
	}
	_, err = r.Launch(ctx, "../x", "v1", "worker")
	mustIs(t, err, ErrInvalid)
}

func TestRescale(t *testing.T) {
	t.Parallel()
	// An etcd of its own: "no write" is checked on the store's revision,
	// which other tests' writes to a shared member would move.
	r, _, _ := setupOwn(t)
	ctx := testCtx(t)
	seed(t, r, "web", "v1", "worker")

	// Never scaled: nothing happens.
	res, err := r.Rescale(ctx, "web", "v1", "worker")
	must(t, err)
	if len(res.Started)+len(res.Stopped) != 0 {
		t.Fatalf("Rescale of an unscaled proc = %+v", res)
	}
	_, err = r.Scale(ctx, "web", "v1", "worker", 2)
	must(t, err)
	// No drift: no write.
	rev0, err := r.CurrentRevision(ctx)
	must(t, err)
	res, err = r.Rescale(ctx, "web", "v1", "worker")
	must(t, err)
	rev1, err := r.CurrentRevision(ctx)
	must(t, err)
	if rev1 != rev0 || res.Desired != 2 {
		t.Fatalf("Rescale without drift wrote (rev %d -> %d) or got desired %d", rev0, rev1, res.Desired)
	}
	// Drift: an instance is lost; Rescale starts one replacement at the
	// stored count, never another count.
	h1 := register(t, r, "h1")
	insts, err := r.AppInstances(ctx, "web")
	must(t, err)
	tk, err := r.Ticket(ctx, insts[0].Ticket)
	must(t, err)
	_, err = h1.Claim(ctx, tk)
	must(t, err)
	must(t, r.MarkLost(ctx, insts[0].ID, "test"))
	res, err = r.Rescale(ctx, "web", "v1", "worker")
	must(t, err)
	if len(res.Started) != 1 || res.Desired != 2 {
		t.Fatalf("Rescale after a loss = %+v, want one start at desired 2", res)
	}
	if n, err := r.CurrentScale(ctx, "web", "v1", "worker"); err != nil || n != 2 {
		t.Fatalf("CurrentScale = %d, %v", n, err)
	}
}
