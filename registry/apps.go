package registry

import (
	"context"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Apps lists all apps sorted by name. If some stored values do not decode,
// it returns the others together with an error wrapping ErrCorrupt.
func (r *Registry) Apps(ctx context.Context) ([]App, error) {
	resp, err := r.cli.Get(ctx, r.appsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, errorf("registry: list apps: %w", err)
	}
	var apps []App
	var errs []error
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), r.appsDir())
		if strings.Contains(name, "/") {
			continue
		}
		a, err := decodeApp(kv.Value, kv.Key, name, kv.ModRevision)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		apps = append(apps, a)
	}
	return apps, joinCorrupt(errs)
}

// App returns one app.
func (r *Registry) App(ctx context.Context, name string) (App, error) {
	if err := validName("app name", name); err != nil {
		return App{}, err
	}
	resp, err := r.cli.Get(ctx, r.appKey(name))
	if err != nil {
		return App{}, errorf("registry: get app %q: %w", name, err)
	}
	kv := first(resp.Kvs)
	if kv == nil {
		return App{}, fmt.Errorf("%w: app %q", ErrNotFound, name)
	}
	return decodeApp(kv.Value, kv.Key, name, kv.ModRevision)
}

// RegisterApp creates an app; ErrExists if it exists. Created defaults to
// now.
func (r *Registry) RegisterApp(ctx context.Context, a App) (App, error) {
	if err := validLabel("app name", a.Name); err != nil {
		return App{}, err
	}
	if a.Created.IsZero() {
		a.Created = time.Now().UTC()
	}
	k := r.appKey(a.Name)
	resp, err := r.cli.Txn(ctx).If(absent(k)).Then(clientv3.OpPut(k, encode(a))).Commit()
	if err != nil {
		return App{}, errorf("registry: register app %q: %w", a.Name, err)
	}
	if !resp.Succeeded {
		return App{}, fmt.Errorf("%w: app %q", ErrExists, a.Name)
	}
	a.ModRevision = resp.Header.Revision
	return a, nil
}

// UnregisterApp deletes an app with its env, revisions, process types and
// scale in one transaction. Unless force is set it refuses with ErrInUse
// while the app has instances that are not terminal. With force, the
// instances are first stopped through tickets (every scale to 0, a stop
// ticket for each live instance), then the records go: the agents carry
// out the stops; the instance records stay until they are exited and
// collected. A caller that must see them gone waits for that.
func (r *Registry) UnregisterApp(ctx context.Context, name string, force bool) error {
	if err := validName("app name", name); err != nil {
		return err
	}
	if force {
		if err := r.stopAppInstances(ctx, name); err != nil {
			return err
		}
	}
	return retry(ctx, fmt.Sprintf("registry: unregister app %q", name), func() (bool, error) {
		snap, err := r.cli.Txn(ctx).Then(
			clientv3.OpGet(r.appKey(name)),
			clientv3.OpGet(r.instancesDir(), clientv3.WithPrefix()),
		).Commit()
		if err != nil {
			return false, errorf("registry: unregister app %q: %w", name, err)
		}
		app := first(rangeKvs(snap, 0))
		if app == nil {
			return false, fmt.Errorf("%w: app %q", ErrNotFound, name)
		}
		if !force {
			if n := r.activeInstances(rangeKvs(snap, 1), name, "", ""); n > 0 {
				return false, fmt.Errorf("%w: app %q has %d instances", ErrInUse, name, n)
			}
		}
		// The range compare fails if anything under the app (a new scale,
		// and so new instances) was written since the snapshot.
		resp, err := r.cli.Txn(ctx).If(
			unchanged(r.appKey(name), app.ModRevision),
			clientv3.Compare(clientv3.ModRevision(r.appDir(name)).WithPrefix(), "<", snap.Header.Revision+1),
		).Then(
			clientv3.OpDelete(r.appKey(name)),
			clientv3.OpDelete(r.appDir(name), clientv3.WithPrefix()),
			clientv3.OpDelete(r.genDir(name), clientv3.WithPrefix()),
			clientv3.OpDelete(r.statusDir()+name+"/", clientv3.WithPrefix()),
			clientv3.OpDelete(r.deployingKey(name)),
			clientv3.OpDelete(r.deploysDir(name), clientv3.WithPrefix()),
		).Commit()
		if err != nil {
			return false, errorf("registry: unregister app %q: %w", name, err)
		}
		return resp.Succeeded, nil
	})
}

// activeInstances counts non-terminal instances of app (and rev, proc when
// not empty) among instance kvs. Undecodable values are skipped.
func (r *Registry) activeInstances(kvs []*mvccpb.KeyValue, app, rev, proc string) int {
	n := 0
	for _, kv := range kvs {
		in, err := decodeInstance(kv, strings.TrimPrefix(string(kv.Key), r.instancesDir()))
		if err != nil {
			continue
		}
		if in.App == app && (rev == "" || in.Rev == rev) && (proc == "" || in.Proc == proc) && !in.State.Terminal() {
			n++
		}
	}
	return n
}

// Env returns the env vars of an app. Stored vars that do not check out
// (see Launch) are left out and named by a BadRecords error beside the
// others.
func (r *Registry) Env(ctx context.Context, app string) (map[string]string, error) {
	if err := validName("app name", app); err != nil {
		return nil, err
	}
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.envDir(app), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, errorf("registry: env of %q: %w", app, err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return nil, fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	env, errs := r.decodeEnvs(app, rangeKvs(resp, 1))
	return env, joinCorrupt(errs)
}

// decodeEnvs reads the env vars of app from kvs, skipping (and returning)
// those that do not check out: a key holding "=" would pass another
// variable, or a value with a NUL byte no process could be given.
func (r *Registry) decodeEnvs(app string, kvs []*mvccpb.KeyValue) (map[string]string, []error) {
	env := make(map[string]string, len(kvs))
	var errs []error
	for _, kv := range kvs {
		k := strings.TrimPrefix(string(kv.Key), r.envDir(app))
		v, err := decodeEnv(kv.Key, app, k, kv.Value)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		env[k] = v
	}
	return env, errs
}

// EnvVar returns one env var; ErrNotFound if the app or the key is missing.
func (r *Registry) EnvVar(ctx context.Context, app, key string) (string, error) {
	if err := validName("app name", app); err != nil {
		return "", err
	}
	if err := validEnvKey(key); err != nil {
		return "", err
	}
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.envKey(app, key)),
	).Commit()
	if err != nil {
		return "", errorf("registry: env %s of %q: %w", key, app, err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return "", fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	kv := first(rangeKvs(resp, 1))
	if kv == nil {
		return "", fmt.Errorf("%w: env var %s of app %q", ErrNotFound, key, app)
	}
	return decodeEnv(kv.Key, app, key, kv.Value)
}

// SetEnv sets env vars of an app in one transaction. Released revisions
// keep the env of their release: the change reaches revisions released
// later (their first Scale). Running instances are not restarted.
func (r *Registry) SetEnv(ctx context.Context, app string, vars map[string]string) error {
	if err := validName("app name", app); err != nil {
		return err
	}
	ops := make([]clientv3.Op, 0, len(vars))
	for k, v := range vars {
		if err := validEnv(k, v); err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(r.envKey(app, k), v))
	}
	return r.appTxn(ctx, app, "set env", append(ops, touch(r.appConfigKey(app))))
}

// UnsetEnv removes env vars of an app in one transaction; missing keys are
// ignored.
func (r *Registry) UnsetEnv(ctx context.Context, app string, keys ...string) error {
	if err := validName("app name", app); err != nil {
		return err
	}
	ops := make([]clientv3.Op, 0, len(keys))
	for _, k := range keys {
		if err := validEnvKey(k); err != nil {
			return err
		}
		ops = append(ops, clientv3.OpDelete(r.envKey(app, k)))
	}
	return r.appTxn(ctx, app, "unset env", append(ops, touch(r.appConfigKey(app))))
}

// appTxn applies ops if the app exists.
func (r *Registry) appTxn(ctx context.Context, app, what string, ops []clientv3.Op) error {
	resp, err := r.cli.Txn(ctx).If(exists(r.appKey(app))).Then(ops...).Commit()
	if err != nil {
		return errorf("registry: %s of %q: %w", what, app, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	return nil
}

// Revisions lists the revisions of an app sorted by name.
func (r *Registry) Revisions(ctx context.Context, app string) ([]Revision, error) {
	if err := validName("app name", app); err != nil {
		return nil, err
	}
	kvs, err := r.appList(ctx, app, r.revDir(app))
	if err != nil {
		return nil, err
	}
	var revs []Revision
	var errs []error
	for _, kv := range kvs {
		rv, err := decodeRevision(kv.Key, kv.Value, kv.ModRevision, app, strings.TrimPrefix(string(kv.Key), r.revDir(app)))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		revs = append(revs, rv)
	}
	return revs, joinCorrupt(errs)
}

// appList gets everything under dir, or ErrNotFound if the app is missing.
func (r *Registry) appList(ctx context.Context, app, dir string) ([]*mvccpb.KeyValue, error) {
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(dir, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, errorf("registry: list %s: %w", r.rel([]byte(dir)), err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return nil, fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	return rangeKvs(resp, 1), nil
}

// Revision returns one revision.
func (r *Registry) Revision(ctx context.Context, app, rev string) (Revision, error) {
	if err := validNames("app name", app, "revision name", rev); err != nil {
		return Revision{}, err
	}
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.revKey(app, rev)),
	).Commit()
	if err != nil {
		return Revision{}, errorf("registry: get revision %s/%s: %w", app, rev, err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return Revision{}, fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	kv := first(rangeKvs(resp, 1))
	if kv == nil {
		return Revision{}, fmt.Errorf("%w: revision %q of app %q", ErrNotFound, rev, app)
	}
	return decodeRevision(kv.Key, kv.Value, kv.ModRevision, app, rev)
}

func validRevision(rv Revision) error {
	if err := validNames("app name", rv.App, "revision name", rv.Name); err != nil {
		return err
	}
	switch {
	case rv.ArtifactURL == "" && rv.Dir == "":
		return fmt.Errorf("%w: revision %q needs an artifact url or a dir", ErrInvalid, rv.Name)
	case rv.ArtifactURL != "" && rv.Dir != "":
		return fmt.Errorf("%w: revision %q has both an artifact url and a dir", ErrInvalid, rv.Name)
	case rv.Dir != "":
		if !path.IsAbs(rv.Dir) || path.Clean(rv.Dir) != rv.Dir {
			return fmt.Errorf("%w: revision dir %s must be a clean absolute path", ErrInvalid, short(rv.Dir))
		}
		if rv.SHA256 != "" {
			return fmt.Errorf("%w: revision %q: sha256 is only for artifacts", ErrInvalid, rv.Name)
		}
		return nil
	}
	u, err := url.Parse(rv.ArtifactURL)
	if err != nil {
		return fmt.Errorf("%w: artifact url %s: %v", ErrInvalid, short(rv.ArtifactURL), err)
	}
	switch u.Scheme {
	case "file", "http", "https":
	default:
		return fmt.Errorf("%w: artifact url %s: scheme must be file, http or https", ErrInvalid, short(rv.ArtifactURL))
	}
	if !hexRE.MatchString(rv.SHA256) {
		return fmt.Errorf("%w: sha256 %s must be 64 lower-case hex digits", ErrInvalid, short(rv.SHA256))
	}
	return nil
}

// RegisterRevision creates a revision; ErrNotFound if the app is missing,
// ErrExists if the revision exists. Created defaults to now. The new
// revision is a draft (rv.Release is ignored): its first Scale releases
// it with the app's process types and env of then.
func (r *Registry) RegisterRevision(ctx context.Context, rv Revision) (Revision, error) {
	rv.SHA256 = strings.ToLower(rv.SHA256)
	rv.Release = nil
	if err := validRevision(rv); err != nil {
		return Revision{}, err
	}
	if rv.Created.IsZero() {
		rv.Created = time.Now().UTC()
	}
	k := r.revKey(rv.App, rv.Name)
	resp, err := r.cli.Txn(ctx).If(exists(r.appKey(rv.App)), absent(k)).
		Then(clientv3.OpPut(k, encode(rv))).
		Else(clientv3.OpGet(r.appKey(rv.App), clientv3.WithCountOnly())).Commit()
	if err != nil {
		return Revision{}, errorf("registry: register revision %s/%s: %w", rv.App, rv.Name, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return Revision{}, fmt.Errorf("%w: app %q", ErrNotFound, rv.App)
		}
		return Revision{}, fmt.Errorf("%w: revision %q of app %q", ErrExists, rv.Name, rv.App)
	}
	rv.ModRevision = resp.Header.Revision
	return rv, nil
}

// UnregisterRevision deletes a revision and its scale entries; ErrInUse
// while it has instances that are not terminal.
func (r *Registry) UnregisterRevision(ctx context.Context, app, rev string) error {
	if err := validNames("app name", app, "revision name", rev); err != nil {
		return err
	}
	return r.removeChild(ctx, app, "revision", rev, r.revKey(app, rev), rev, "")
}

// removeChild deletes key (a revision or process type of app) with the
// scale entries of that rev or proc, if no non-terminal instance of it
// exists and nothing under the app's scale changed since the check.
func (r *Registry) removeChild(ctx context.Context, app, kind, name, key, rev, proc string) error {
	what := fmt.Sprintf("registry: remove %s %q of app %q", kind, name, app)
	return retry(ctx, what, func() (bool, error) {
		snap, err := r.cli.Txn(ctx).Then(
			clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
			clientv3.OpGet(key),
			clientv3.OpGet(r.instancesDir(), clientv3.WithPrefix()),
			clientv3.OpGet(r.scaleDir(app), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		if snap.Responses[0].GetResponseRange().Count == 0 {
			return false, fmt.Errorf("%w: app %q", ErrNotFound, app)
		}
		kv := first(rangeKvs(snap, 1))
		if kv == nil {
			return false, fmt.Errorf("%w: %s %q of app %q", ErrNotFound, kind, name, app)
		}
		if n := r.activeInstances(rangeKvs(snap, 2), app, rev, proc); n > 0 {
			return false, fmt.Errorf("%w: %s %q of app %q has %d instances", ErrInUse, kind, name, app, n)
		}
		ops := []clientv3.Op{clientv3.OpDelete(key)}
		if proc != "" {
			ops = append(ops, touch(r.appConfigKey(app))) // see releaseTxn
		}
		for _, skv := range rangeKvs(snap, 3) {
			sr, sp, ok := strings.Cut(strings.TrimPrefix(string(skv.Key), r.scaleDir(app)), "/")
			if ok && ((rev != "" && sr == rev) || (proc != "" && sp == proc)) {
				ops = append(ops, clientv3.OpDelete(string(skv.Key)), clientv3.OpDelete(r.genKey(app, sr, sp)))
			}
		}
		resp, err := r.cli.Txn(ctx).If(
			unchanged(key, kv.ModRevision),
			clientv3.Compare(clientv3.ModRevision(r.scaleDir(app)).WithPrefix(), "<", snap.Header.Revision+1),
		).Then(ops...).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		return resp.Succeeded, nil
	})
}

// ProcTypes lists the process types of an app sorted by name.
func (r *Registry) ProcTypes(ctx context.Context, app string) ([]ProcType, error) {
	if err := validName("app name", app); err != nil {
		return nil, err
	}
	kvs, err := r.appList(ctx, app, r.procDir(app))
	if err != nil {
		return nil, err
	}
	var procs []ProcType
	var errs []error
	for _, kv := range kvs {
		p, err := decodeProc(kv.Key, kv.Value, kv.ModRevision, app, strings.TrimPrefix(string(kv.Key), r.procDir(app)))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		procs = append(procs, p)
	}
	return procs, joinCorrupt(errs)
}

// ProcType returns one process type.
func (r *Registry) ProcType(ctx context.Context, app, proc string) (ProcType, error) {
	if err := validNames("app name", app, "process type", proc); err != nil {
		return ProcType{}, err
	}
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.procKey(app, proc)),
	).Commit()
	if err != nil {
		return ProcType{}, errorf("registry: get process type %s/%s: %w", app, proc, err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return ProcType{}, fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	kv := first(rangeKvs(resp, 1))
	if kv == nil {
		return ProcType{}, fmt.Errorf("%w: process type %q of app %q", ErrNotFound, proc, app)
	}
	return decodeProc(kv.Key, kv.Value, kv.ModRevision, app, proc)
}

func validProcType(p *ProcType) error {
	if err := firstErr(validLabel("app name", p.App), validLabel("process type", p.Name)); err != nil {
		return err
	}
	for k, v := range p.Env {
		if err := validEnv(k, v); err != nil {
			return err
		}
	}
	switch p.Restart.Policy {
	case "", "always", "on-failure", "never":
	default:
		return fmt.Errorf("%w: restart policy %s must be always, on-failure or never", ErrInvalid, short(p.Restart.Policy))
	}
	for name, d := range map[string]Duration{
		"restart initial delay": p.Restart.InitialDelay, "restart max delay": p.Restart.MaxDelay,
		"restart reset after": p.Restart.ResetAfter, "stop timeout": p.StopTimeout, "min uptime": p.MinUptime,
	} {
		if d < 0 {
			return fmt.Errorf("%w: %s %s is negative", ErrInvalid, name, d)
		}
	}
	if p.Restart.MaxRestarts < 0 {
		return fmt.Errorf("%w: max restarts %d is negative", ErrInvalid, p.Restart.MaxRestarts)
	}
	sig, err := normSignal("stop signal", p.StopSignal)
	if err != nil {
		return err
	}
	switch sig {
	case "STOP", "TSTP", "CONT":
		// The supervisor sends the stop signal and then SIGCONT: a
		// job-control signal would leave every stop to the kill timeout.
		return fmt.Errorf("%w: stop signal %s is a job-control signal and does not stop a process", ErrInvalid, sig)
	}
	p.StopSignal = sig
	if h := p.Health; h != nil {
		switch h.Type {
		case CheckExec:
			if len(h.Command) == 0 {
				return fmt.Errorf("%w: exec health check needs a command", ErrInvalid)
			}
		case CheckTCP:
		case CheckHTTP:
			if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
				return fmt.Errorf("%w: http health check path %s must start with /", ErrInvalid, short(h.Path))
			}
		default:
			return fmt.Errorf("%w: health check type %s must be exec, tcp or http", ErrInvalid, short(string(h.Type)))
		}
		if h.Period < 0 || h.Timeout < 0 || h.FailureThreshold < 0 {
			return fmt.Errorf("%w: health check period, timeout and failure threshold must not be negative", ErrInvalid)
		}
	}
	if p.Update != nil {
		if err := p.Update.Valid(); err != nil {
			return fmt.Errorf("update strategy: %w", err)
		}
	}
	if p.Limits.MemoryBytes < 0 || p.Limits.CPUMillis < 0 || p.Limits.Pids < 0 {
		return fmt.Errorf("%w: limits must not be negative", ErrInvalid)
	}
	for field, v := range map[string]string{"user": p.User, "group": p.Group} {
		if v != "" && (len(v) > 32 || !userRE.MatchString(v)) {
			return fmt.Errorf("%w: %s %s is not a valid user or group name", ErrInvalid, field, short(v))
		}
	}
	return nil
}

// SetProcType creates or replaces a process type; ErrNotFound if the app is
// missing. Revisions already released keep the process type of their
// release: the change reaches revisions released later (their first
// Scale), and draft revisions. Running instances are not restarted.
func (r *Registry) SetProcType(ctx context.Context, p ProcType) (ProcType, error) {
	if err := validProcType(&p); err != nil {
		return ProcType{}, err
	}
	resp, err := r.cli.Txn(ctx).If(exists(r.appKey(p.App))).
		Then(clientv3.OpPut(r.procKey(p.App, p.Name), encode(p)), touch(r.appConfigKey(p.App))).Commit()
	if err != nil {
		return ProcType{}, errorf("registry: set process type %s/%s: %w", p.App, p.Name, err)
	}
	if !resp.Succeeded {
		return ProcType{}, fmt.Errorf("%w: app %q", ErrNotFound, p.App)
	}
	p.ModRevision = resp.Header.Revision
	return p, nil
}

// RemoveProcType deletes a process type and its scale entries; ErrInUse
// while it has instances that are not terminal.
func (r *Registry) RemoveProcType(ctx context.Context, app, proc string) error {
	if err := validNames("app name", app, "process type", proc); err != nil {
		return err
	}
	return r.removeChild(ctx, app, "process type", proc, r.procKey(app, proc), "", proc)
}
