package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Deployment returns the active deployment of app, else its latest one;
// ErrNotFound if it has none (or the app does not exist).
func (r *Registry) Deployment(ctx context.Context, app string) (Deployment, error) {
	if err := validName("app name", app); err != nil {
		return Deployment{}, err
	}
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.deployingKey(app)),
		clientv3.OpGet(r.deploysDir(app), clientv3.WithPrefix(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1)),
	).Commit()
	if err != nil {
		return Deployment{}, errorf("registry: deployment of %q: %w", app, err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return Deployment{}, fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	kv := first(rangeKvs(resp, 1))
	if kv == nil {
		kv = first(rangeKvs(resp, 2))
	}
	if kv == nil {
		return Deployment{}, fmt.Errorf("%w: deployment of app %q", ErrNotFound, app)
	}
	return decodeDeploy(kv.Key, kv.Value, kv.ModRevision, app)
}

// Deployments returns the deployments of app, oldest first, the active one
// (if any) last. Records that do not decode are skipped and named by a
// BadRecords error beside the others.
func (r *Registry) Deployments(ctx context.Context, app string) ([]Deployment, error) {
	if err := validName("app name", app); err != nil {
		return nil, err
	}
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.deploysDir(app), clientv3.WithPrefix()),
		clientv3.OpGet(r.deployingKey(app)),
	).Commit()
	if err != nil {
		return nil, errorf("registry: deployments of %q: %w", app, err)
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return nil, fmt.Errorf("%w: app %q", ErrNotFound, app)
	}
	var out []Deployment
	var errs []error
	for _, kv := range append(rangeKvs(resp, 1), rangeKvs(resp, 2)...) {
		d, err := decodeDeploy(kv.Key, kv.Value, kv.ModRevision, app)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, d)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, joinCorrupt(errs)
}

// ActiveDeployments returns the active deployment of every app, sorted by
// app: what the reconciler drives. Records that do not decode are skipped
// and named by a BadRecords error beside the others.
func (r *Registry) ActiveDeployments(ctx context.Context) ([]Deployment, error) {
	resp, err := r.cli.Get(ctx, r.deployingDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, errorf("registry: active deployments: %w", err)
	}
	var out []Deployment
	var errs []error
	for _, kv := range resp.Kvs {
		app := strings.TrimPrefix(string(kv.Key), r.deployingDir())
		d, err := decodeDeploy(kv.Key, kv.Value, kv.ModRevision, app)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, d)
	}
	return out, joinCorrupt(errs)
}

// DeployAction is an operator's action on an active deployment.
type DeployAction string

// Deployment actions.
const (
	// DeployPause stops the driver's steps (and deadlines) where they are.
	DeployPause DeployAction = "pause"
	// DeployResume goes on from a pause; the progress deadline restarts.
	DeployResume DeployAction = "resume"
	// DeployPromote moves a deployment awaiting promotion on: the rest of
	// the instances follow the canaries.
	DeployPromote DeployAction = "promote"
	// DeployFail fails the deployment: with auto-revert, or while its
	// canaries are not promoted, it reverts (the canaries go); else it
	// stops where it is. A reverting deployment stops reverting (failed).
	DeployFail DeployAction = "fail"
)

// DeploymentAction applies a to the active deployment of app in one
// transaction compared on the record. ErrNotFound when no deployment of
// app is active; ErrInvalid, naming the state, when a means nothing in it
// (resume of a running one, promote without canaries awaiting it, an
// unknown action).
func (r *Registry) DeploymentAction(ctx context.Context, app string, a DeployAction) (Deployment, error) {
	if err := validName("app name", app); err != nil {
		return Deployment{}, err
	}
	return r.updateActive(ctx, app, string(a), func(d *Deployment, now time.Time) error {
		return applyAction(d, a, now)
	})
}

// updateActive applies change to the active deployment of app and writes
// it (moving it to the history if it became terminal), compared on the
// record's mod revision, retrying on conflict.
func (r *Registry) updateActive(ctx context.Context, app, what string, change func(*Deployment, time.Time) error) (Deployment, error) {
	op := fmt.Sprintf("registry: %s deployment of %q", what, app)
	var out Deployment
	err := retry(ctx, op, func() (bool, error) {
		resp, err := r.cli.Txn(ctx).Then(clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
			clientv3.OpGet(r.deployingKey(app))).Commit()
		if err != nil {
			return false, errorf("%s: %w", op, err)
		}
		kv := first(rangeKvs(resp, 1))
		switch {
		case resp.Responses[0].GetResponseRange().Count == 0:
			return false, fmt.Errorf("%w: app %q", ErrNotFound, app)
		case kv == nil:
			return false, fmt.Errorf("%w: active deployment of app %q", ErrNotFound, app)
		}
		d, err := decodeDeploy(kv.Key, kv.Value, kv.ModRevision, app)
		if err != nil {
			return false, err
		}
		now := time.Now().UTC()
		if err := change(&d, now); err != nil {
			return false, err
		}
		d.Updated = now
		txn := r.cli.Txn(ctx).If(unchanged(r.deployingKey(app), kv.ModRevision)).Then(r.putDeploy(d)...)
		wr, err := txn.Commit()
		if err != nil {
			return false, errorf("%s: %w", op, err)
		}
		d.ModRevision = wr.Header.Revision
		out = d
		return wr.Succeeded, nil
	})
	return out, err
}

// putDeploy writes d where its state puts it: the active key while
// active; once terminal, the history (and the active key goes).
func (r *Registry) putDeploy(d Deployment) []clientv3.Op {
	if d.Active() {
		return []clientv3.Op{clientv3.OpPut(r.deployingKey(d.App), encode(d))}
	}
	if d.Ended.IsZero() {
		d.Ended = d.Updated
	}
	return []clientv3.Op{clientv3.OpDelete(r.deployingKey(d.App)), clientv3.OpPut(r.deployKey(d.App, d.ID), encode(d))}
}

// applyAction changes d as a asks at now, or says why it cannot.
func applyAction(d *Deployment, a DeployAction, now time.Time) error {
	refuse := func(why string) error {
		return fmt.Errorf("%w: cannot %s deployment %s of app %q: it is %s%s", ErrInvalid, a, d.ID, d.App, d.State, why)
	}
	switch a {
	case DeployPause:
		if d.State == DeployPaused {
			return refuse(" already")
		}
		d.PausedIn, d.State, d.Reason = d.State, DeployPaused, "paused by operator"
	case DeployResume:
		if d.State != DeployPaused {
			return refuse("")
		}
		d.State, d.PausedIn, d.Reason, d.Progressed = d.PausedIn, "", "", now
		if d.State == "" {
			d.State = DeployRunning
		}
	case DeployPromote:
		if d.State != DeployAwaitingPromotion {
			if d.State == DeployRunning && d.hasCanaries() {
				return refuse(" with canaries not all healthy yet; promote once it awaits promotion")
			}
			return refuse(", not awaiting promotion")
		}
		for i := range d.Procs {
			d.Procs[i].Promoted = true
		}
		d.State, d.Progressed = DeployRunning, now
	case DeployFail:
		d.fail("failed by operator", now)
	default:
		return fmt.Errorf("%w: unknown deployment action %s (want pause, resume, promote or fail)", ErrInvalid, short(string(a)))
	}
	return nil
}

// hasCanaries reports whether a process type of d has canaries not yet
// promoted.
func (d Deployment) hasCanaries() bool {
	for _, p := range d.Procs {
		if !p.Promoted {
			return true
		}
	}
	return false
}

// fail moves d on from a failure: to reverting when a process type has
// auto-revert or unpromoted canaries (which a failure rolls back), else
// to failed; a revert that fails is failed.
func (d *Deployment) fail(reason string, now time.Time) {
	revert := false
	for _, p := range d.Procs {
		revert = revert || p.Strategy.AutoRevert || !p.Promoted
	}
	from := d.State
	if from == DeployPaused {
		from = d.PausedIn
	}
	d.PausedIn = ""
	switch {
	case from == DeployReverting:
		d.State, d.Reason, d.Ended = DeployFailed, "revert failed: "+reason+" (after: "+d.Reason+")", now
	case revert:
		d.State, d.Reason, d.PhaseStart, d.Progressed = DeployReverting, reason, now, now
	default:
		d.State, d.Reason, d.Ended = DeployFailed, reason, now
	}
}

// Fail returns d failed at now for reason, as the driver records a
// failure: reverting with auto-revert or unpromoted canaries, else
// failed (a failing revert is failed).
func (d Deployment) Fail(reason string, now time.Time) Deployment {
	d.Procs = append([]DeployProc(nil), d.Procs...)
	d.fail(reason, now)
	d.Updated = now
	return d
}

// scaleOrDeploy is Scale: while a deployment of app is active and moves
// proc to rev, the count goes to the deployment instead (its
// DeployProc.Count; ScaleResult.Deployment names it), and the driver
// moves the instances there max-parallel at a time, so the scale never
// overshoots. Scale's transaction compares the active key, so a
// deployment created meanwhile makes it retry and find it. A Scale of
// another revision is written as usual.
func (r *Registry) scaleOrDeploy(ctx context.Context, app, rev, proc string, n int) (ScaleResult, error) {
	for range maxAttempts {
		res, err := r.scale(ctx, app, rev, proc, n, nil)
		if !errors.Is(err, errDeploying) {
			return res, err
		}
		res, err = r.setDeployCount(ctx, app, rev, proc, n)
		if !errors.Is(err, errNotDeploying) {
			return res, err
		}
	}
	return ScaleResult{}, errorf("registry: scale %s/%s/%s: %w", app, rev, proc, ErrConflict)
}

// errDeploying makes a Scale of the revision an active deployment moves
// to go to the deployment (setDeployCount); errNotDeploying sends it back
// when that deployment is gone meanwhile.
var (
	errDeploying    = errors.New("registry: the scale is a deployment's")
	errNotDeploying = errors.New("registry: no deployment moves the scale")
)

// activeIn decodes the active deployment record kv of app (nil kv: none).
// A record that does not decode reads as none, with its mod revision.
func activeIn(kv *mvccpb.KeyValue, app string) (*Deployment, int64) {
	if kv == nil {
		return nil, 0
	}
	d, err := decodeDeploy(kv.Key, kv.Value, kv.ModRevision, app)
	if err != nil {
		return nil, kv.ModRevision
	}
	return &d, kv.ModRevision
}

// setDeployCount gives a Scale of the active deployment's revision to the
// deployment: proc's Count becomes n (the driver moves toward it).
func (r *Registry) setDeployCount(ctx context.Context, app, rev, proc string, n int) (ScaleResult, error) {
	d, err := r.updateActive(ctx, app, "scale", func(d *Deployment, now time.Time) error {
		if !d.targets(rev, proc) {
			return errNotDeploying
		}
		for i := range d.Procs {
			if d.Procs[i].Proc == proc {
				d.Procs[i].Count = n
			}
		}
		d.Progressed = now
		return nil
	})
	if err != nil {
		return ScaleResult{}, err
	}
	return ScaleResult{Desired: n, Deployment: d.ID}, nil
}

// targets reports whether a Scale of rev/proc goes to d: d moves proc to
// rev (not back from it).
func (d Deployment) targets(rev, proc string) bool {
	_, ok := d.Proc(proc)
	return ok && d.Rev == rev && d.Active() && d.State != DeployReverting &&
		!(d.State == DeployPaused && d.PausedIn == DeployReverting)
}

// cancelDeployment ends the active deployment of app, if any, as
// cancelled for reason.
func (r *Registry) cancelDeployment(ctx context.Context, app, reason string) error {
	_, err := r.updateActive(ctx, app, "cancel", func(d *Deployment, now time.Time) error {
		d.State, d.Reason, d.Ended, d.PausedIn = DeployCancelled, reason, now, ""
		return nil
	})
	if isNotFound(err) {
		return nil
	}
	return err
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
