package registry

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CurrentScale returns the desired count of app/rev/proc (0 if never set).
// The process type is the revision's release's when it is released (see
// Release), else the app's.
func (r *Registry) CurrentScale(ctx context.Context, app, rev, proc string) (int, error) {
	if err := validNames("app name", app, "revision name", rev, "process type", proc); err != nil {
		return 0, err
	}
	s, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.revKey(app, rev)),
		clientv3.OpGet(r.procKey(app, proc), clientv3.WithCountOnly()),
		clientv3.OpGet(r.scaleKey(app, rev, proc)),
	).Commit()
	if err != nil {
		return 0, errorf("registry: current scale %s/%s/%s: %w", app, rev, proc, err)
	}
	switch {
	case s.Responses[0].GetResponseRange().Count == 0:
		return 0, fmt.Errorf("%w: app %q", ErrNotFound, app)
	case s.Responses[1].GetResponseRange().Count == 0:
		return 0, fmt.Errorf("%w: revision %q of app %q", ErrNotFound, rev, app)
	}
	appHas := s.Responses[2].GetResponseRange().Count > 0
	rkv := first(rangeKvs(s, 1))
	if rv, err := decodeRevision(rkv.Key, rkv.Value, rkv.ModRevision, app, rev); err == nil && rv.Released() {
		if _, err := rv.Proc(proc, appHas); err != nil {
			return 0, err
		}
	} else if !appHas {
		return 0, fmt.Errorf("%w: process type %q of app %q", ErrNotFound, proc, app)
	}
	kv := first(rangeKvs(s, 3))
	if kv == nil {
		return 0, nil
	}
	return decodeScale(kv.Key, kv.Value)
}

// Scales lists desired counts of one app, or of all apps when app is "".
func (r *Registry) Scales(ctx context.Context, app string) ([]ScaleEntry, error) {
	dir := r.appsDir()
	if app != "" {
		if err := validName("app name", app); err != nil {
			return nil, err
		}
		dir = r.appDir(app)
	}
	resp, err := r.cli.Get(ctx, dir, clientv3.WithPrefix())
	if err != nil {
		return nil, errorf("registry: list scales: %w", err)
	}
	var out []ScaleEntry
	var errs []error
	for _, kv := range resp.Kvs {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), r.appsDir()), "/")
		if len(parts) != 4 || parts[1] != "scale" {
			continue
		}
		n, err := decodeScale(kv.Key, kv.Value)
		if err == nil {
			err = invalid(KindScale, kv.Key, validNames("app name", parts[0], "revision name", parts[2], "process type", parts[3]))
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, ScaleEntry{App: parts[0], Rev: parts[2], Proc: parts[3], Desired: n})
	}
	return out, joinCorrupt(errs)
}
