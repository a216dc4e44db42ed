package registry

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Tickets lists all tickets in creation order, with Holder filled from
// their claims. If some stored values do not decode, it returns the others
// together with a BadRecords error naming them (see Skipped). A ticket
// whose claim does not decode is listed without a Holder.
func (r *Registry) Tickets(ctx context.Context) ([]Ticket, error) {
	return r.tickets(ctx, func(Ticket) bool { return true })
}

// HostTickets lists the tickets targeted at host or held by it.
func (r *Registry) HostTickets(ctx context.Context, host string) ([]Ticket, error) {
	if err := validName("host", host); err != nil {
		return nil, err
	}
	return r.tickets(ctx, func(t Ticket) bool { return t.Host == host || t.Holder == host })
}

func (r *Registry) tickets(ctx context.Context, keep func(Ticket) bool) ([]Ticket, error) {
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.ticketsDir(), clientv3.WithPrefix()),
		clientv3.OpGet(r.claimsDir(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, errorf("registry: list tickets: %w", err)
	}
	ts, _, errs := r.decodeTickets(rangeKvs(resp, 0), rangeKvs(resp, 1))
	var out []Ticket
	for _, t := range ts {
		if keep(t) {
			out = append(out, t)
		}
	}
	return out, joinCorrupt(errs)
}

// decodeTickets decodes ticket kvs and fills Holder from claim kvs.
func (r *Registry) decodeTickets(tkvs, ckvs []*mvccpb.KeyValue) ([]Ticket, map[string]string, []error) {
	holders := make(map[string]string, len(ckvs))
	var errs []error
	for _, kv := range ckvs {
		h, err := decodeClaim(kv.Key, kv.Value)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		holders[strings.TrimPrefix(string(kv.Key), r.claimsDir())] = h
	}
	var out []Ticket
	for _, kv := range tkvs {
		t, err := decodeTicket(kv, strings.TrimPrefix(string(kv.Key), r.ticketsDir()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.Holder = holders[t.ID]
		out = append(out, t)
	}
	return out, holders, errs
}

// Ticket returns one ticket with its Holder.
func (r *Registry) Ticket(ctx context.Context, id string) (Ticket, error) {
	if err := validID("ticket id", id); err != nil {
		return Ticket{}, err
	}
	resp, err := r.cli.Txn(ctx).Then(clientv3.OpGet(r.ticketKey(id)), clientv3.OpGet(r.claimKey(id))).Commit()
	if err != nil {
		return Ticket{}, errorf("registry: get ticket %q: %w", id, err)
	}
	kv := first(rangeKvs(resp, 0))
	if kv == nil {
		return Ticket{}, fmt.Errorf("%w: ticket %q", ErrNotFound, id)
	}
	t, err := decodeTicket(kv, id)
	if err != nil {
		return Ticket{}, err
	}
	if c := first(rangeKvs(resp, 1)); c != nil {
		if t.Holder, err = decodeClaim(c.Key, c.Value); err != nil {
			return Ticket{}, err
		}
	}
	return t, nil
}

// CreateTicket creates a stop, restart or signal ticket for one instance
// and returns it with its id. The ticket targets the instance's host; App,
// Rev and Proc are taken from the instance (if set they must match).
// MaxAttempts defaults to 3. A stop ticket is recorded on the instance
// (StopTicket), which then no longer counts toward its scale; a second stop
// ticket for the same instance fails with ErrExists. Start tickets are made
// only by Scale, which keeps them consistent with the desired count.
func (r *Registry) CreateTicket(ctx context.Context, t Ticket) (Ticket, error) {
	switch t.Op {
	case TicketStop, TicketRestart:
		if t.Signal != "" {
			return Ticket{}, fmt.Errorf("%w: %s ticket takes no signal", ErrInvalid, t.Op)
		}
	case TicketSignal:
		sig, err := normSignal("ticket signal", t.Signal)
		if err != nil {
			return Ticket{}, err
		}
		if sig == "" {
			return Ticket{}, fmt.Errorf("%w: signal ticket needs a signal", ErrInvalid)
		}
		t.Signal = sig
	case TicketStart:
		return Ticket{}, fmt.Errorf("%w: start tickets are created by Scale", ErrInvalid)
	default:
		return Ticket{}, fmt.Errorf("%w: ticket op %s must be stop, restart or signal", ErrInvalid, short(string(t.Op)))
	}
	if err := validID("instance id", t.Instance); err != nil {
		return Ticket{}, err
	}
	if t.MaxAttempts < 0 || t.Attempts != 0 {
		return Ticket{}, fmt.Errorf("%w: ticket attempts", ErrInvalid)
	}
	if t.MaxAttempts == 0 {
		t.MaxAttempts = 3
	}
	what := fmt.Sprintf("registry: create %s ticket for %q", t.Op, t.Instance)
	out := t
	err := retry(ctx, what, func() (bool, error) {
		in, err := r.Instance(ctx, t.Instance)
		if err != nil {
			return false, err
		}
		for field, pair := range map[string][2]string{"app": {t.App, in.App}, "rev": {t.Rev, in.Rev}, "proc": {t.Proc, in.Proc}} {
			if pair[0] != "" && pair[0] != pair[1] {
				return false, fmt.Errorf("%w: ticket %s %q does not match instance %q (%s)", ErrInvalid, field, pair[0], in.ID, pair[1])
			}
		}
		if in.State.Terminal() {
			return false, fmt.Errorf("%w: instance %q is %s", ErrInvalid, in.ID, in.State)
		}
		if in.Host == "" {
			return false, fmt.Errorf("%w: instance %q is not on a host yet", ErrInvalid, in.ID)
		}
		if t.Op == TicketStop && in.StopTicket != "" {
			return false, fmt.Errorf("%w: stop ticket %s for instance %q", ErrExists, in.StopTicket, in.ID)
		}
		out = t
		out.ID, out.App, out.Rev, out.Proc, out.Host = newTicketID(), in.App, in.Rev, in.Proc, in.Host
		out.Created, out.Holder = time.Now().UTC(), ""
		ops := []clientv3.Op{clientv3.OpPut(r.ticketKey(out.ID), encode(out))}
		if t.Op == TicketStop {
			in.StopTicket = out.ID
			ops = append(ops, clientv3.OpPut(r.instanceKey(in.ID), encode(in)), touch(r.genKey(in.App, in.Rev, in.Proc)))
		}
		resp, err := r.cli.Txn(ctx).If(unchanged(r.instanceKey(in.ID), in.ModRevision)).Then(ops...).Commit()
		if err != nil {
			return false, errorf("%s: %w", what, err)
		}
		out.ModRevision = resp.Header.Revision
		return resp.Succeeded, nil
	})
	if err != nil {
		return Ticket{}, err
	}
	return out, nil
}
