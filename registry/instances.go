package registry

import (
	"context"
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
		return nil, fmt.Errorf("registry: list instances: %w", err)
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
		return Instance{}, fmt.Errorf("registry: get instance %q: %w", id, err)
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
	if err := validID("instance id", id); err != nil {
		return err
	}
	what := fmt.Sprintf("registry: mark instance %q lost", id)
	return retry(ctx, what, func() (bool, error) {
		in, err := r.Instance(ctx, id)
		if err != nil {
			return false, err
		}
		if err := ValidTransition(in.State, InstanceLost); err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		cur := in
		in.State, in.Since, in.Reason = InstanceLost, time.Now().UTC(), reason
		ops := []clientv3.Op{
			clientv3.OpPut(r.instanceKey(id), encode(in)),
			touch(r.genKey(in.App, in.Rev, in.Proc)),
		}
		if in.Host != "" {
			ops = append(ops, clientv3.OpDelete(r.hostInstanceKey(in.Host, id)))
		}
		for _, t := range []string{in.Ticket, in.StopTicket} {
			if t != "" {
				ops = append(ops, clientv3.OpDelete(r.ticketKey(t)), clientv3.OpDelete(r.claimKey(t)))
			}
		}
		resp, err := r.cli.Txn(ctx).If(unchanged(r.instanceKey(id), cur.ModRevision)).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		return resp.Succeeded, nil
	})
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
			return false, fmt.Errorf("%s: %w", what, err)
		}
		return resp.Succeeded, nil
	})
}
