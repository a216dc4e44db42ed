package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Instances lists all instances sorted by id. If some stored values do not
// decode, it returns the others together with an error wrapping ErrCorrupt.
func (r *Registry) Instances(ctx context.Context) ([]Instance, error) {
	return r.instances(ctx, func(Instance) bool { return true })
}

// AppInstances lists the instances of an app.
func (r *Registry) AppInstances(ctx context.Context, app string) ([]Instance, error) {
	if err := validName("app name", app); err != nil {
		return nil, err
	}
	return r.instances(ctx, func(in Instance) bool { return in.App == app })
}

// HostInstances lists the instances whose Host is host, in any state.
func (r *Registry) HostInstances(ctx context.Context, host string) ([]Instance, error) {
	if err := validName("host", host); err != nil {
		return nil, err
	}
	return r.instances(ctx, func(in Instance) bool { return in.Host == host })
}

func (r *Registry) instances(ctx context.Context, keep func(Instance) bool) ([]Instance, error) {
	resp, err := r.cli.Get(ctx, r.instancesDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, errorf("registry: list instances: %w", err)
	}
	var out []Instance
	var errs []error
	for _, kv := range resp.Kvs {
		in, err := decodeInstance(kv, strings.TrimPrefix(string(kv.Key), r.instancesDir()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if keep(in) {
			out = append(out, in)
		}
	}
	return out, joinCorrupt(errs)
}

// Instance returns one instance.
func (r *Registry) Instance(ctx context.Context, id string) (Instance, error) {
	if err := validID("instance id", id); err != nil {
		return Instance{}, err
	}
	resp, err := r.cli.Get(ctx, r.instanceKey(id))
	if err != nil {
		return Instance{}, errorf("registry: get instance %q: %w", id, err)
	}
	kv := first(resp.Kvs)
	if kv == nil {
		return Instance{}, fmt.Errorf("%w: instance %q", ErrNotFound, id)
	}
	return decodeInstance(kv, id)
}

// MarkLost moves a non-terminal instance to lost with reason, deletes its
// host index entry and any outstanding start or stop ticket of it with their
// claims, all in one transaction. It is the one state change a non-holder
// (the reconciler) makes.
func (r *Registry) MarkLost(ctx context.Context, id, reason string) error {
	return r.markLost(ctx, id, reason, "")
}

// errMoved is markLost's refusal of an instance no longer on the host it
// was judged lost on.
var errMoved = errors.New("instance moved to another host")

// markLost is MarkLost; a host other than "" must still be the
// instance's host (else errMoved): the verdict was on that host.
func (r *Registry) markLost(ctx context.Context, id, reason, host string) error {
	if err := validID("instance id", id); err != nil {
		return err
	}
	what := fmt.Sprintf("registry: mark instance %q lost", id)
	return retry(ctx, what, func() (bool, error) {
		in, err := r.Instance(ctx, id)
		if err != nil {
			return false, err
		}
		if host != "" && in.Host != host {
			return false, errorf("%s: now on %q, not %q: %w", what, in.Host, host, errMoved)
		}
		if err := ValidTransition(in.State, InstanceLost); err != nil {
			return false, errorf("%s: %w", what, err)
		}
		ops := append(r.lostOps(in, reason), touch(r.genKey(in.App, in.Rev, in.Proc)))
		resp, err := r.cli.Txn(ctx).If(unchanged(r.instanceKey(id), in.ModRevision)).Then(ops...).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		return resp.Succeeded, nil
	})
}

// lostOps are the writes that make instance in (as read) lost: the record,
// its host index entry, and its outstanding tickets with their claims. The
// caller adds the generation key touch.
func (r *Registry) lostOps(in Instance, reason string) []clientv3.Op {
	id := in.ID
	in.State, in.Since, in.Reason = InstanceLost, time.Now().UTC(), reason
	ops := []clientv3.Op{clientv3.OpPut(r.instanceKey(id), encode(in))}
	if in.Host != "" {
		ops = append(ops, clientv3.OpDelete(r.hostInstanceKey(in.Host, id)))
	}
	for _, t := range []string{in.Ticket, in.StopTicket} {
		if t != "" {
			ops = append(ops, clientv3.OpDelete(r.ticketKey(t)), clientv3.OpDelete(r.claimKey(t)))
		}
	}
	return ops
}

// lostPerTxn is how many instances MarkAllLost writes per transaction: at
// most 6 operations each plus one generation key each stays within etcd's
// default limit of 128 operations per transaction.
const lostPerTxn = 16

// MarkAllLost marks the instances in insts lost with reason, as MarkLost
// does for one, but in as few transactions as etcd allows: each
// transaction compares the mod revisions the caller read (insts as
// returned by Instances or HostInstances) and writes up to 16 instances,
// so a host's hundred instances take 7 round trips instead of 200. When a
// transaction fails because one of its instances changed since it was
// read, its instances are done one by one with MarkLost; those that have
// become terminal or lost meanwhile, or moved to another host, are
// skipped. It returns how many it
// marked and the errors of the rest, joined.
func (r *Registry) MarkAllLost(ctx context.Context, insts []Instance, reason string) (int, error) {
	var errs []error
	marked := 0
	for i := 0; i < len(insts); i += lostPerTxn {
		chunk := insts[i:min(len(insts), i+lostPerTxn)]
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		gens := map[string]bool{}
		valid := chunk[:0:0]
		for _, in := range chunk {
			if err := validID("instance id", in.ID); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := ValidTransition(in.State, InstanceLost); err != nil {
				errs = append(errs, errorf("registry: mark instance %q lost: %w", in.ID, err))
				continue
			}
			if in.ModRevision == 0 {
				errs = append(errs, fmt.Errorf("%w: instance %s has no revision; pass it as read", ErrInvalid, in.ID))
				continue
			}
			// Its host and tickets become keys to delete.
			if err := lostKeysValid(in); err != nil {
				errs = append(errs, err)
				continue
			}
			valid = append(valid, in)
			cmps = append(cmps, unchanged(r.instanceKey(in.ID), in.ModRevision))
			ops = append(ops, r.lostOps(in, reason)...)
			if g := r.genKey(in.App, in.Rev, in.Proc); !gens[g] {
				gens[g] = true
				ops = append(ops, touch(g))
			}
		}
		if len(valid) == 0 {
			continue
		}
		resp, err := r.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return marked, errors.Join(append(errs, errorf("registry: mark %d instances lost: %w", len(valid), err))...)
		}
		if resp.Succeeded {
			marked += len(valid)
			continue
		}
		for _, in := range valid {
			err := r.markLost(ctx, in.ID, reason, in.Host)
			switch {
			case err == nil:
				marked++
			case errors.Is(err, ErrNotFound), errors.Is(err, ErrTransition), errors.Is(err, errMoved):
				// Gone, terminal or already lost since it was read, or
				// claimed by another host (a start ticket whose claim
				// died with this host's lease): not this verdict's.
			default:
				errs = append(errs, err)
			}
		}
	}
	return marked, errors.Join(errs...)
}

// lostKeysValid checks the fields of a caller's instance that lostOps
// builds keys from.
func lostKeysValid(in Instance) error {
	if in.Host != "" {
		if err := validName("instance host", in.Host); err != nil {
			return err
		}
	}
	for _, t := range []string{in.Ticket, in.StopTicket} {
		if t != "" {
			if err := validID("instance ticket", t); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeleteInstance removes a terminal instance record (garbage collection).
// It refuses with ErrInvalid while the instance is not terminal.
func (r *Registry) DeleteInstance(ctx context.Context, id string) error {
	if err := validID("instance id", id); err != nil {
		return err
	}
	what := fmt.Sprintf("registry: delete instance %q", id)
	return retry(ctx, what, func() (bool, error) {
		in, err := r.Instance(ctx, id)
		if err != nil {
			return false, err
		}
		if !in.State.Terminal() {
			return false, fmt.Errorf("%w: instance %q is %s, not terminal", ErrInvalid, id, in.State)
		}
		ops := []clientv3.Op{clientv3.OpDelete(r.instanceKey(id))}
		if in.Host != "" {
			ops = append(ops, clientv3.OpDelete(r.hostInstanceKey(in.Host, id)))
		}
		resp, err := r.cli.Txn(ctx).If(unchanged(r.instanceKey(id), in.ModRevision)).Then(ops...).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		return resp.Succeeded, nil
	})
}
