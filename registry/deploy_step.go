package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/backoff"
)

// DeployScale is one desired count a deployment step changes: From is the
// count the step was planned on, To the one it writes.
type DeployScale struct {
	Rev, Proc string
	From, To  int
}

// DeployChange is one step of a deployment's driver: the scales to change
// and the record to write (its state and progress; ModRevision ignored).
type DeployChange struct {
	Scales []DeployScale
	Next   Deployment
}

// DeployStep writes one step of deployment d, as read (d.ModRevision), in
// ONE transaction: the record becomes c.Next (moved to the history if
// terminal), and each scale in c.Scales goes from From to To with its
// start tickets, cancellations and stop tickets, exactly as Scale writes
// them (admission by the fleet's room included; instances that do not
// fit wait, and the reconciler admits them later). The transaction
// compares the record's mod revision, so a step planned on an older read
// (a second or restarted leader's, or one made before an operator's
// action or a Scale given to the deployment) is refused whole with
// ErrStale and writes nothing; so is one whose scale no longer holds From.
// Conflicts with agents changing instances meanwhile are retried.
func (r *Registry) DeployStep(ctx context.Context, d Deployment, c DeployChange) (Deployment, error) {
	if d.ModRevision == 0 {
		return Deployment{}, fmt.Errorf("%w: deployment step without the record's mod revision", ErrInvalid)
	}
	next := c.Next
	if next.App != d.App || next.ID != d.ID {
		return Deployment{}, fmt.Errorf("%w: deployment step changes deployment %s/%s into %s/%s", ErrInvalid,
			d.App, d.ID, next.App, next.ID)
	}
	for _, sc := range c.Scales {
		if err := validNames("revision name", sc.Rev, "process type", sc.Proc); err != nil {
			return Deployment{}, err
		}
		if sc.To < 0 {
			return Deployment{}, fmt.Errorf("%w: deployment step scales %s/%s to %d", ErrInvalid, sc.Rev, sc.Proc, sc.To)
		}
	}
	if next.Updated.IsZero() {
		next.Updated = time.Now().UTC()
	}
	what := fmt.Sprintf("registry: deployment %s of %q: step", d.ID, d.App)
	pause := backoff.Backoff{Policy: conflictBackoff}
	for attempt := 0; ; attempt++ {
		done, err := r.deployStep(ctx, d, c.Scales, &next)
		if errors.Is(err, errShrunk) {
			continue
		}
		if err != nil || done {
			return next, err
		}
		if attempt >= maxAttempts {
			return Deployment{}, errorf("%s: %w", what, ErrConflict)
		}
		if err := pause.Wait(ctx); err != nil {
			return Deployment{}, errorf("%s: %w", what, err)
		}
	}
}

// deployStep tries the step once; done is false after a conflict with
// something other than the record (retry).
func (r *Registry) deployStep(ctx context.Context, d Deployment, scales []DeployScale, next *Deployment) (bool, error) {
	what := fmt.Sprintf("registry: deployment %s of %q: step", d.ID, d.App)
	cmps := []clientv3.Cmp{unchanged(r.deployingKey(d.App), d.ModRevision)}
	ops := r.putDeploy(*next)
	var fleet *Fleet
	chunk := 0
	for _, sc := range scales {
		s, err := r.scaleSnapshot(ctx, d.App, sc.Rev, sc.Proc)
		if err != nil {
			return false, err
		}
		if s.revOK {
			// A released revision's process type is its release's (its
			// ticket's Reserve too); a step never releases one: the
			// deployment's creation released its revision.
			if err := r.scaleRevision(ctx, &s, d.App, sc.Rev, sc.Proc, useStored); err != nil {
				return false, err
			}
		}
		switch {
		case s.deployMod != d.ModRevision:
			return false, fmt.Errorf("%s: %w", what, ErrStale)
		case !s.app, !s.revOK, !s.procOK:
			return false, fmt.Errorf("%w: %s/%s/%s (deployment %s)", ErrNotFound, d.App, sc.Rev, sc.Proc, d.ID)
		case s.desired != sc.From || s.desiredErr != nil:
			return false, fmt.Errorf("%s: scale %s/%s is %d, planned from %d: %w", what, sc.Rev, sc.Proc, s.desired, sc.From, ErrStale)
		}
		p, err := r.planScale(ctx, &s, scaleTarget{d.App, sc.Rev, sc.Proc, sc.To}, &fleet)
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		t, err := r.scaleTxn(ctx, &s, p)
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		cmps, ops = append(cmps, t.cmps...), append(ops, t.then...)
		chunk += p.add + max(-p.diff, 0)
	}
	resp, err := r.cli.Txn(ctx).If(cmps...).Then(ops...).
		Else(clientv3.OpGet(r.deployingKey(d.App), clientv3.WithKeysOnly())).Commit()
	if err != nil && tooLarge(err) && chunk > 1 {
		r.shrinkChunk(chunk)
		return false, errShrunk
	}
	if err != nil {
		return false, errorf("%s: %w", what, err)
	}
	if !resp.Succeeded {
		if kv := first(rangeKvs(resp, 0)); kv == nil || kv.ModRevision != d.ModRevision {
			return false, fmt.Errorf("%s: %w", what, ErrStale)
		}
		return false, nil
	}
	if next.Active() {
		next.ModRevision = resp.Header.Revision
	} else {
		next.ModRevision = 0
	}
	return true, nil
}
