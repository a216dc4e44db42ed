package registry

import (
	"strings"
	"testing"
)

func TestLaunch(t *testing.T) {
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
