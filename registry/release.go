package registry

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// appConfigKey is the app's configuration generation key: every write of
// its process types or env vars through this package touches it, so a
// release compares one key to know that none was deleted since its read
// (a prefix compare sees changed and new keys, not deleted ones). Names of
// revisions cannot start with "_", so it never meets a generation key.
func (r *Registry) appConfigKey(app string) string { return r.genDir(app) + "_config" }

// validRelease checks a stored release of app as the writers check their
// input: each process type (under its own name) and each env var.
func validRelease(app string, rl *Release) error {
	if rl == nil {
		return nil
	}
	for name, p := range rl.Procs {
		p.App, p.Name, p.ModRevision = app, name, 0
		if err := validProcType(&p); err != nil {
			return fmt.Errorf("release process type %s: %w", short(name), err)
		}
		rl.Procs[name] = p
	}
	for k, v := range rl.Env {
		if err := validEnv(k, v); err != nil {
			return fmt.Errorf("release env: %w", err)
		}
	}
	return nil
}

// Proc returns the process type proc of the released revision rv, or an
// error wrapping ErrNotFound that says why it lacks it. appHas says
// whether the app has the process type now (it was added after the
// release).
func (rv Revision) Proc(proc string, appHas bool) (ProcType, error) {
	if p, ok := rv.Release.Procs[proc]; ok {
		return p, nil
	}
	if appHas {
		return ProcType{}, fmt.Errorf("%w: revision %s of app %s has no process type %s: it was released before %s was added; register a new revision (visor rev register %s NEWREV --from %s)",
			ErrNotFound, rv.Name, rv.App, proc, proc, rv.App, rv.Name)
	}
	return ProcType{}, fmt.Errorf("%w: revision %s of app %s has no process type %s (it has %s)",
		ErrNotFound, rv.Name, rv.App, proc, procNames(rv.Release.Procs))
}

func procNames(procs map[string]ProcType) string {
	if len(procs) == 0 {
		return "none"
	}
	return strings.Join(slices.Sorted(maps.Keys(procs)), ", ")
}

// releaseRead is the app's configuration as one read saw it: what a
// release of a revision snapshots, and what its transaction compares.
type releaseRead struct {
	at        int64 // the read's etcd revision
	configMod int64 // configKey's mod revision (0: absent)
	procs     map[string]ProcType
	env       map[string]string
}

// readRelease reads the process types and env of app in one read
// transaction. A process type that does not decode fails the read (with
// the BadRecords): a release is all the process types or nothing, never
// one that lacks a part and later says it was added after. Env vars that
// do not check out are left out, as Launch always left them out of what
// it passed to a process (visor doctor lists them).
func (r *Registry) readRelease(ctx context.Context, app string) (releaseRead, error) {
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.procDir(app), clientv3.WithPrefix()),
		clientv3.OpGet(r.envDir(app), clientv3.WithPrefix()),
		clientv3.OpGet(r.appConfigKey(app)),
	).Commit()
	if err != nil {
		return releaseRead{}, errorf("registry: read configuration of %q: %w", app, err)
	}
	rr := releaseRead{at: resp.Header.Revision, procs: map[string]ProcType{}}
	var errs []error
	for _, kv := range rangeKvs(resp, 0) {
		name := strings.TrimPrefix(string(kv.Key), r.procDir(app))
		p, err := decodeProc(kv.Key, kv.Value, kv.ModRevision, app, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.ModRevision = 0
		rr.procs[name] = p
	}
	if err := joinCorrupt(errs); err != nil {
		return releaseRead{}, fmt.Errorf("registry: release of app %q needs every process type to decode (fix or remove it; visor doctor lists it): %w", app, err)
	}
	env, envErrs := r.decodeEnvs(app, rangeKvs(resp, 1))
	for _, err := range envErrs {
		r.log.Warn("env var left out of a release", "app", app, "error", err)
	}
	if len(env) > 0 {
		rr.env = env
	}
	if kv := first(rangeKvs(resp, 2)); kv != nil {
		rr.configMod = kv.ModRevision
	}
	return rr, nil
}

// releaseTxn returns the compares and the put that release the draft
// revision rv (as read, with its ModRevision) with the configuration rr:
// the revision record is the one read, and no process type or env var of
// the app was written or deleted since rr was read. Added to another
// transaction (Scale's, a deployment's creation), the release happens in
// the same transaction as the change that needs it, or not at all.
func (r *Registry) releaseTxn(rv Revision, rr releaseRead, now time.Time) ([]clientv3.Cmp, clientv3.Op, Revision) {
	rv.Release = &Release{Released: now, Procs: rr.procs, Env: rr.env}
	cmps := []clientv3.Cmp{
		unchanged(r.revKey(rv.App, rv.Name), rv.ModRevision),
		unchanged(r.appConfigKey(rv.App), rr.configMod),
		clientv3.Compare(clientv3.ModRevision(r.procDir(rv.App)).WithPrefix(), "<", rr.at+1),
		clientv3.Compare(clientv3.ModRevision(r.envDir(rv.App)).WithPrefix(), "<", rr.at+1),
	}
	return cmps, clientv3.OpPut(r.revKey(rv.App, rv.Name), encode(rv)), rv
}

// ReleaseRevision releases the revision rev of app without scaling it:
// it snapshots the app's process types and env into the revision record,
// as the revision's first Scale does. A revision already released is
// returned as it is (a release is never redone).
func (r *Registry) ReleaseRevision(ctx context.Context, app, rev string) (Revision, error) {
	var out Revision
	what := fmt.Sprintf("registry: release %s/%s", app, rev)
	err := retry(ctx, what, func() (bool, error) {
		rv, err := r.Revision(ctx, app, rev)
		if err != nil || rv.Released() {
			out = rv
			return err == nil, err
		}
		rr, err := r.readRelease(ctx, app)
		if err != nil {
			return false, err
		}
		cmps, put, next := r.releaseTxn(rv, rr, time.Now().UTC())
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(put).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		next.ModRevision = resp.Header.Revision
		out = next
		return resp.Succeeded, nil
	})
	return out, err
}

// RegisterRevisionFrom registers the draft revision rev of app with the
// artifact (or directory) of the revision from: how a configuration
// change ships for a build already registered. The new revision is
// released, with the app's configuration then, by its first Scale.
func (r *Registry) RegisterRevisionFrom(ctx context.Context, app, rev, from string) (Revision, error) {
	old, err := r.Revision(ctx, app, from)
	if err != nil {
		return Revision{}, err
	}
	return r.RegisterRevision(ctx, Revision{App: app, Name: rev, ArtifactURL: old.ArtifactURL, SHA256: old.SHA256, Dir: old.Dir})
}

// revSnap is the revision record as Scale read it.
type revSnap struct {
	mod     int64 // 0: absent
	rv      Revision
	err     error        // the record does not decode
	release *releaseRead // set when this Scale releases the revision
}

// scaleRevision decides, on Scale's snapshot s, where the process type
// proc comes from, and sets s.procOK and s.reserve from it: the release
// of a released revision; for a draft that this Scale (n != useStored)
// releases, the app's process types and env read now (written into the
// revision by the Scale's transaction); for a draft that Rescale or a
// deployment's step (n == useStored: they never release) scales (a
// revision of a Visor older than releases, scaled before it: it stays a
// draft until its next Scale), the app's process type. A
// revision record that does not decode is scaled as a draft only to 0 or
// by Rescale: it cannot be released.
func (r *Registry) scaleRevision(ctx context.Context, s *scaleSnap, app, rev, proc string, n int) error {
	rv := s.revision.rv
	switch {
	case s.revision.err != nil:
		if n > 0 {
			return fmt.Errorf("registry: scale %s/%s/%s: %w", app, rev, proc, s.revision.err)
		}
	case rv.Released():
		p, err := rv.Proc(proc, s.procOK)
		if err != nil {
			return err
		}
		s.procOK, s.reserve = true, p.reservation()
		return nil
	case n != useStored:
		rr, err := r.readRelease(ctx, app)
		if err != nil {
			return err
		}
		p, ok := rr.procs[proc]
		if !ok {
			return fmt.Errorf("%w: process type %q of app %q", ErrNotFound, proc, app)
		}
		s.revision.release = &rr
		s.procOK, s.reserve = true, p.reservation()
		return nil
	}
	if !s.procOK {
		return fmt.Errorf("%w: process type %q of app %q", ErrNotFound, proc, app)
	}
	return nil
}

// revisionTxn adds to a Scale transaction of app/rev/proc on snapshot s
// what guards (and, for its first Scale, releases) the revision: the
// revision record is as read, and a draft's process type exists; a
// release's compares and put (releaseTxn) when this Scale releases it.
func (r *Registry) revisionTxn(s *scaleSnap, app, rev, proc string, cmps []clientv3.Cmp, then []clientv3.Op) ([]clientv3.Cmp, []clientv3.Op) {
	if rel := s.revision.release; rel != nil {
		rc, put, _ := r.releaseTxn(s.revision.rv, *rel, time.Now().UTC())
		return append(cmps, rc...), append(then, put)
	}
	cmps = append(cmps, unchanged(r.revKey(app, rev), s.revision.mod))
	if !s.revision.rv.Released() {
		cmps = append(cmps, exists(r.procKey(app, proc)))
	}
	return cmps, then
}

// deployRelease returns what the creation of a deployment of app to rev
// needs of the revision: the process types it runs (its release's; for a
// draft, the app's as read now) and, for a draft, the compares and the put
// that release it in the creation's transaction (see releaseTxn); for a
// released revision, a compare that its record is as read.
func (r *Registry) deployRelease(ctx context.Context, app, rev string) (map[string]ProcType, []clientv3.Cmp, []clientv3.Op, error) {
	rv, err := r.Revision(ctx, app, rev)
	if err != nil {
		return nil, nil, nil, err
	}
	if rv.Released() {
		return rv.Release.Procs, []clientv3.Cmp{unchanged(r.revKey(app, rev), rv.ModRevision)}, nil, nil
	}
	rr, err := r.readRelease(ctx, app)
	if err != nil {
		return nil, nil, nil, err
	}
	cmps, put, _ := r.releaseTxn(rv, rr, time.Now().UTC())
	return rr.procs, cmps, []clientv3.Op{put}, nil
}
