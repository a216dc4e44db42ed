package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeployRequest asks for a deployment of App to Rev.
type DeployRequest struct {
	App, Rev string
	// Procs are the process types to move; empty: every process type
	// with instances desired (those already all on Rev are left out).
	Procs []string
	// Override's set fields (see Strategy.Merge) take the place of the
	// process types' strategies for this deployment.
	Override *Strategy
	// Force replaces an active deployment: it becomes cancelled in the
	// same transaction, and the new one moves from the scales as they are.
	Force bool
	// By is who asks (user@host).
	By string
}

// ErrDeployActive reports that an app already has an active deployment.
var ErrDeployActive = errors.New("registry: a deployment of the app is active")

// deploySnap is what CreateDeployment decides on, read in one transaction.
type deploySnap struct {
	rev                 int64
	app, revOK          bool
	procs               map[string]ProcType
	scales              map[string]map[string]int // proc -> rev -> desired
	active              *Deployment
	activeMod, scaleMod int64
}

// readDeploySnap reads the app, the revision, the process types, the
// scales and the active deployment of app at one revision.
func (r *Registry) readDeploySnap(ctx context.Context, app, rev string) (deploySnap, error) {
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.appKey(app), clientv3.WithCountOnly()),
		clientv3.OpGet(r.revKey(app, rev), clientv3.WithCountOnly()),
		clientv3.OpGet(r.procDir(app), clientv3.WithPrefix()),
		clientv3.OpGet(r.scaleDir(app), clientv3.WithPrefix()),
		clientv3.OpGet(r.deployingKey(app)),
	).Commit()
	if err != nil {
		return deploySnap{}, errorf("registry: deploy %s/%s: read: %w", app, rev, err)
	}
	s := deploySnap{rev: resp.Header.Revision, app: resp.Responses[0].GetResponseRange().Count > 0,
		revOK: resp.Responses[1].GetResponseRange().Count > 0, procs: map[string]ProcType{},
		scales: map[string]map[string]int{}}
	for _, kv := range rangeKvs(resp, 2) {
		name := strings.TrimPrefix(string(kv.Key), r.procDir(app))
		p, err := decodeProc(kv.Key, kv.Value, kv.ModRevision, app, name)
		if err != nil {
			return deploySnap{}, err
		}
		s.procs[name] = p
	}
	for _, kv := range rangeKvs(resp, 3) {
		s.scaleMod = max(s.scaleMod, kv.ModRevision)
		sr, sp, ok := strings.Cut(strings.TrimPrefix(string(kv.Key), r.scaleDir(app)), "/")
		if !ok {
			continue
		}
		n, err := decodeScale(kv.Key, kv.Value)
		if err != nil {
			return deploySnap{}, err
		}
		if s.scales[sp] == nil {
			s.scales[sp] = map[string]int{}
		}
		s.scales[sp][sr] = n
	}
	if kv := first(rangeKvs(resp, 4)); kv != nil {
		d, err := decodeDeploy(kv.Key, kv.Value, kv.ModRevision, app)
		if err != nil {
			return deploySnap{}, err
		}
		s.active, s.activeMod = &d, kv.ModRevision
	}
	return s, nil
}

// CreateDeployment writes a deployment of req.App to req.Rev, in state
// running, for the elected reconciler to drive (see doc.go,
// "Deployments"). Each process type keeps its total desired count over
// revisions (Count) and moves it to Rev. Nothing is written when it
// fails: ErrNotFound for an unknown app, revision or process type;
// ErrInvalid for a process type the revision does not have, one without
// instances, a revision that already runs everything it would move, or a
// bad strategy (which names the field); ErrDeployActive while another
// deployment is active, unless req.Force.
func (r *Registry) CreateDeployment(ctx context.Context, req DeployRequest) (Deployment, error) {
	return r.createDeployment(ctx, req, "")
}

func (r *Registry) createDeployment(ctx context.Context, req DeployRequest, revertOf string) (Deployment, error) {
	if err := validNames("app name", req.App, "revision name", req.Rev); err != nil {
		return Deployment{}, err
	}
	for _, p := range req.Procs {
		if err := validName("process type", p); err != nil {
			return Deployment{}, err
		}
	}
	if req.Override != nil {
		if err := req.Override.Valid(); err != nil {
			return Deployment{}, err
		}
	}
	what := fmt.Sprintf("registry: deploy %s/%s", req.App, req.Rev)
	var out Deployment
	err := retry(ctx, what, func() (bool, error) {
		s, err := r.readDeploySnap(ctx, req.App, req.Rev)
		if err != nil {
			return false, err
		}
		// The deployment's revision runs its release's process types; a
		// draft is released in the creation's transaction (release.go).
		var rcmps []clientv3.Cmp
		var rops []clientv3.Op
		if s.app && s.revOK {
			if s.procs, rcmps, rops, err = r.deployRelease(ctx, req.App, req.Rev); err != nil {
				return false, err
			}
		}
		d, err := planDeployment(s, req, time.Now().UTC())
		if err != nil {
			return false, err
		}
		d.RevertOf = revertOf
		cmps := []clientv3.Cmp{exists(r.appKey(req.App)), exists(r.revKey(req.App, req.Rev)),
			unchanged(r.deployingKey(req.App), s.activeMod),
			clientv3.Compare(clientv3.ModRevision(r.scaleDir(req.App)).WithPrefix(), "<", s.rev+1),
			clientv3.Compare(clientv3.ModRevision(r.procDir(req.App)).WithPrefix(), "<", s.rev+1)}
		cmps = append(cmps, rcmps...)
		ops := append([]clientv3.Op{clientv3.OpPut(r.deployingKey(req.App), encode(d))}, rops...)
		if old := s.active; old != nil {
			old.State, old.Reason, old.Updated, old.Ended = DeployCancelled, "replaced by deployment "+d.ID, d.Created, d.Created
			ops = append(ops, clientv3.OpPut(r.deployKey(req.App, old.ID), encode(*old)))
		}
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		d.ModRevision = resp.Header.Revision
		out = d
		return resp.Succeeded, nil
	})
	return out, err
}

// planDeployment decides the record CreateDeployment writes on s, or why
// it writes none.
func planDeployment(s deploySnap, req DeployRequest, now time.Time) (Deployment, error) {
	switch {
	case !s.app:
		return Deployment{}, fmt.Errorf("%w: app %q", ErrNotFound, req.App)
	case !s.revOK:
		return Deployment{}, fmt.Errorf("%w: revision %q of app %q", ErrNotFound, req.Rev, req.App)
	case s.active != nil && !req.Force:
		a := s.active
		return Deployment{}, fmt.Errorf("%w: app %q: deployment %s to %s is %s; wait for it, fail it "+
			"(visor deploy fail %s) or replace it (--force)", ErrDeployActive, req.App, a.ID, a.Rev, a.State, req.App)
	}
	procs := req.Procs
	explicit := len(procs) > 0
	if !explicit {
		for name := range s.scales {
			procs = append(procs, name)
		}
		sort.Strings(procs)
	}
	d := Deployment{App: req.App, ID: newDeployID(), Rev: req.Rev, State: DeployRunning, By: req.By,
		Created: now, Updated: now, PhaseStart: now, Progressed: now}
	for _, name := range procs {
		p, ok, err := deployProc(s, req, name)
		if err != nil && explicit {
			return Deployment{}, err
		}
		if ok && !slices.ContainsFunc(d.Procs, func(q DeployProc) bool { return q.Proc == name }) {
			d.Procs = append(d.Procs, p)
		}
	}
	if len(d.Procs) == 0 {
		if len(procs) == 0 {
			return Deployment{}, fmt.Errorf("%w: app %q has no process type with instances to deploy (scale one first)",
				ErrInvalid, req.App)
		}
		return Deployment{}, fmt.Errorf("%w: revision %q already runs every instance of %s of app %q: nothing to deploy",
			ErrInvalid, req.Rev, strings.Join(procs, ", "), req.App)
	}
	return d, nil
}

// deployProc is the entry of proc in a deployment planned on s; ok is
// false (with an error saying why) when proc has nothing to move.
func deployProc(s deploySnap, req DeployRequest, proc string) (DeployProc, bool, error) {
	pt, known := s.procs[proc]
	if !known {
		if len(s.scales[proc]) > 0 {
			return DeployProc{}, false, fmt.Errorf("%w: revision %q of app %q has no process type %q",
				ErrInvalid, req.Rev, req.App, proc)
		}
		return DeployProc{}, false, fmt.Errorf("%w: process type %q of app %q", ErrNotFound, proc, req.App)
	}
	eff := Strategy{}.Merge(pt.Update).Merge(req.Override).WithDefaults()
	if err := eff.Valid(); err != nil {
		return DeployProc{}, false, fmt.Errorf("process type %q: %w", proc, err)
	}
	p := DeployProc{Proc: proc, Strategy: eff, Promoted: eff.Canary == 0}
	for rev, n := range s.scales[proc] {
		p.Count += n
		switch {
		case rev == req.Rev:
			p.NewBefore = n
		case n > 0:
			if p.From == nil {
				p.From = map[string]int{}
			}
			p.From[rev] = n
		}
	}
	switch {
	case p.Count == 0:
		return p, false, fmt.Errorf("%w: process type %q of app %q has no instances desired (scale it first)",
			ErrInvalid, proc, req.App)
	case len(p.From) == 0:
		return p, false, fmt.Errorf("%w: revision %q already runs every instance of %q of app %q (%d): nothing to deploy",
			ErrInvalid, req.Rev, proc, req.App, p.Count)
	}
	return p, true, nil
}

// Rollback deploys app back to rev, or with rev "" to the revision the
// latest deployment moved from (the one that had most of its instances),
// with RevertOf naming that deployment. It replaces an active deployment
// (as DeployRequest.Force does): a rollback is what an operator reaches
// for while a deployment goes wrong. ErrNotFound when rev is "" and the
// app has no deployment to go back from.
func (r *Registry) Rollback(ctx context.Context, app, rev, by string) (Deployment, error) {
	if err := validName("app name", app); err != nil {
		return Deployment{}, err
	}
	latest, err := r.Deployment(ctx, app)
	if err != nil && (rev == "" || !errors.Is(err, ErrNotFound)) {
		if errors.Is(err, ErrNotFound) {
			return Deployment{}, fmt.Errorf("%w: app %q has no deployment to roll back; name the revision", ErrNotFound, app)
		}
		return Deployment{}, err
	}
	if rev == "" {
		rev = latest.previousRev()
		if rev == "" {
			return Deployment{}, fmt.Errorf("%w: deployment %s of app %q moved from no other revision; name the revision",
				ErrNotFound, latest.ID, app)
		}
	}
	return r.createDeployment(ctx, DeployRequest{App: app, Rev: rev, Force: true, By: by}, latest.ID)
}

// previousRev returns the revision d moved most instances from ("" if
// none); ties go to the greater name.
func (d Deployment) previousRev() string {
	total := map[string]int{}
	for _, p := range d.Procs {
		for rev, n := range p.From {
			total[rev] += n
		}
	}
	best := ""
	for rev, n := range total {
		if best == "" || n > total[best] || (n == total[best] && rev > best) {
			best = rev
		}
	}
	return best
}
