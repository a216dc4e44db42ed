package registry

import (
	"context"
	"fmt"
	"maps"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Launch is everything an agent reads to start an instance of
// app/rev/proc: the revision, the process type and the env vars, as of one
// etcd revision. For a released revision (Revision.Released) the process
// type and env are the release's; for a draft (a revision written by a
// Visor older than releases, never scaled since) they are the app's.
type Launch struct {
	Revision Revision
	ProcType ProcType
	Env      map[string]string
}

// Launch reads the revision, the process type and the env of an app in one
// round trip (one read transaction), so a start costs one read, not three.
// A released revision starts from its release (the app's process types and
// env of when it was first scaled, see Release); a draft one from the
// app's. A missing app, revision or process type is ErrNotFound naming it
// (for a released revision, a process type its release lacks, even if the
// app has it now); one that does not decode is a BadRecord. Env vars that
// do not check out (a key with "=" or a NUL byte written into etcd by
// hand, which would pass another variable than the one named) are left
// out of Env and named by a BadRecords error returned with the otherwise
// complete Launch: the caller reports them (Skipped) and may start without
// them.
func (r *Registry) Launch(ctx context.Context, app, rev, proc string) (Launch, error) {
	if err := validNames("app name", app, "revision name", rev, "process type", proc); err != nil {
		return Launch{}, err
	}
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.revKey(app, rev)),
		clientv3.OpGet(r.procKey(app, proc)),
		clientv3.OpGet(r.envDir(app), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return Launch{}, errorf("registry: read %s/%s/%s: %w", app, rev, proc, err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return Launch{}, fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	var l Launch
	kv := first(rangeKvs(resp, 1))
	if kv == nil {
		return Launch{}, fmt.Errorf("%w: revision %q of app %q", ErrNotFound, rev, app)
	}
	if l.Revision, err = decodeRevision(kv.Key, kv.Value, kv.ModRevision, app, rev); err != nil {
		return Launch{}, err
	}
	pkv := first(rangeKvs(resp, 2))
	if l.Revision.Released() {
		if l.ProcType, err = l.Revision.Proc(proc, pkv != nil); err != nil {
			return Launch{}, err
		}
		l.Env = maps.Clone(l.Revision.Release.Env)
		if l.Env == nil {
			l.Env = map[string]string{}
		}
		return l, nil
	}
	if pkv == nil {
		return Launch{}, fmt.Errorf("%w: process type %q of app %q", ErrNotFound, proc, app)
	}
	if l.ProcType, err = decodeProc(pkv.Key, pkv.Value, pkv.ModRevision, app, proc); err != nil {
		return Launch{}, err
	}
	var errs []error
	l.Env, errs = r.decodeEnvs(app, rangeKvs(resp, 3))
	return l, joinCorrupt(errs)
}
