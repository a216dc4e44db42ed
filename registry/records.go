package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Record kinds, as BadRecord.Kind names them.
const (
	KindApp       = "app"
	KindEnv       = "env"
	KindRevision  = "revision"
	KindProcType  = "proc"
	KindScale     = "scale"
	KindTicket    = "ticket"
	KindClaim     = "claim"
	KindInstance  = "instance"
	KindHost      = "host"
	KindHostIndex = "host-index"
	KindDrain     = "drain"
)

// BadRecord is a stored record that does not decode, or decodes to values
// that fail validation: a value written into etcd by hand, by a broken
// client or by an attacker with write access to the prefix. Listings skip
// it and report it (see BadRecords); a read of that one record fails with
// it. It matches ErrCorrupt with errors.Is.
type BadRecord struct {
	// Key is the full etcd key, prefix included: what `etcdctl del` takes.
	Key string
	// Kind is what the key holds by its place in the layout (KindApp,
	// KindInstance, ...).
	Kind string
	// Err says what is wrong with it.
	Err error
}

// Error names the kind, the key and the problem.
func (b BadRecord) Error() string {
	return fmt.Sprintf("%v: %s key %q: %v", ErrCorrupt, b.Kind, b.Key, unprefixed{b.Err})
}

// Is reports whether target is ErrCorrupt.
func (b BadRecord) Is(target error) bool { return target == ErrCorrupt }

// Unwrap returns the decode or validation error.
func (b BadRecord) Unwrap() error { return b.Err }

// BadRecords is the error a listing returns beside the records that did
// decode: the listing's result is complete but for these, which it skipped.
// It matches ErrCorrupt with errors.Is. Callers that can go on without the
// skipped records take them apart from real failures with Skipped.
type BadRecords []BadRecord

// Error names how many records were skipped and the first few.
func (bs BadRecords) Error() string {
	const show = 3
	var b strings.Builder
	fmt.Fprintf(&b, "%v: %d record", ErrCorrupt, len(bs))
	if len(bs) != 1 {
		b.WriteString("s")
	}
	b.WriteString(" skipped: ")
	for i, r := range bs[:min(len(bs), show)] {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s key %q: %v", r.Kind, r.Key, unprefixed{r.Err})
	}
	if len(bs) > show {
		fmt.Fprintf(&b, "; and %d more", len(bs)-show)
	}
	return b.String()
}

// Is reports whether target is ErrCorrupt.
func (bs BadRecords) Is(target error) bool { return target == ErrCorrupt }

// Unwrap returns the records as errors.
func (bs BadRecords) Unwrap() []error {
	out := make([]error, len(bs))
	for i, b := range bs {
		out[i] = b
	}
	return out
}

// badRecords returns errs (BadRecord values) as one BadRecords error, or
// nil when there are none.
func badRecords(errs []error) error {
	var bs BadRecords
	for _, err := range errs {
		var b BadRecord
		var more BadRecords
		switch {
		case errors.As(err, &more):
			bs = append(bs, more...)
		case errors.As(err, &b):
			bs = append(bs, b)
		default:
			bs = append(bs, BadRecord{Kind: "unknown", Err: err})
		}
	}
	if len(bs) == 0 {
		return nil
	}
	return bs
}

// Skipped splits the error of a listing (Apps, Instances, Hosts, Tickets,
// Scales, Env, Launch, ...) into the records it skipped and any other
// error. rest is nil when err is nil or only reports skipped records: the
// listing's result is then good to use. A listing that failed for another
// reason (etcd unreachable, an unknown app) returns rest != nil.
func Skipped(err error) (bad BadRecords, rest error) {
	for e := err; e != nil; {
		if bs, ok := e.(BadRecords); ok {
			return bs, nil
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	if errors.As(err, &bad) {
		return bad, err // mixed with another error: that one counts
	}
	return nil, err
}

// corrupt returns a BadRecord for key of kind.
func corrupt(kind string, key []byte, err error) error {
	return BadRecord{Key: string(key), Kind: kind, Err: err}
}

// decodeJSON decodes a stored JSON object into v. Unknown fields are
// allowed (a newer agent may store more), anything but one object is not.
func decodeJSON(kind string, key, val []byte, v any) error {
	if t := bytes.TrimLeft(val, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return corrupt(kind, key, errors.New("value is not a JSON object"))
	}
	if err := json.Unmarshal(val, v); err != nil {
		return corrupt(kind, key, err)
	}
	return nil
}

// invalid returns the validation error err of a decoded record as a
// BadRecord. It keeps err's message but not its ErrInvalid chain: that
// sentinel means "the caller's input is wrong" (the CLI exits 2 for it),
// and here the caller did nothing wrong, the stored value is.
func invalid(kind string, key []byte, err error) error {
	if err == nil {
		return nil
	}
	msg, _ := strings.CutPrefix(err.Error(), ErrInvalid.Error()+": ")
	return corrupt(kind, key, errors.New(msg))
}

// optName checks a name that may be empty.
func optName(field, v string) error {
	if v == "" {
		return nil
	}
	return validName(field, v)
}

// optID checks an id that may be empty.
func optID(field, v string) error {
	if v == "" {
		return nil
	}
	return validID(field, v)
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// The decoders below read one stored record each. The names a key holds
// (app, revision, host, instance or ticket id) are passed in from the key
// and checked; the record's own copies of them are overwritten. Each
// decoder validates what it returns as the writers do, so a record that a
// writer would refuse is a BadRecord, never a value that fails later (a
// key built from a hostile name, an env entry "A=B", a port out of range).

func decodeApp(v, key []byte, name string, mod int64) (App, error) {
	var a App
	if err := decodeJSON(KindApp, key, v, &a); err != nil {
		return App{}, err
	}
	if err := validLabel("app name", name); err != nil {
		return App{}, invalid(KindApp, key, err)
	}
	a.Name = name
	a.ModRevision = mod
	return a, nil
}

func decodeRevision(key, v []byte, mod int64, app, name string) (Revision, error) {
	var rv Revision
	if err := decodeJSON(KindRevision, key, v, &rv); err != nil {
		return Revision{}, err
	}
	rv.App, rv.Name, rv.ModRevision = app, name, mod
	if err := firstErr(validRevision(rv), validRelease(app, rv.Release)); err != nil {
		return Revision{}, invalid(KindRevision, key, err)
	}
	return rv, nil
}

func decodeProc(key, v []byte, mod int64, app, name string) (ProcType, error) {
	var p ProcType
	if err := decodeJSON(KindProcType, key, v, &p); err != nil {
		return ProcType{}, err
	}
	p.App, p.Name, p.ModRevision = app, name, mod
	if err := validProcType(&p); err != nil {
		return ProcType{}, invalid(KindProcType, key, err)
	}
	return p, nil
}

// decodeEnv checks one env var of app: its key (the last part of the etcd
// key) must be a valid name, so never holds "=", and its value no NUL byte.
func decodeEnv(key []byte, app, name string, v []byte) (string, error) {
	if err := validName("app name", app); err != nil {
		return "", invalid(KindEnv, key, err)
	}
	if err := validEnv(name, string(v)); err != nil {
		return "", invalid(KindEnv, key, err)
	}
	return string(v), nil
}

// decodeScale reads a desired count: a non-negative decimal integer.
func decodeScale(key, v []byte) (int, error) {
	n, err := strconv.Atoi(string(v))
	if err != nil {
		return 0, corrupt(KindScale, key, fmt.Errorf("count %s is not a decimal integer", short(string(v))))
	}
	if n < 0 {
		return 0, corrupt(KindScale, key, fmt.Errorf("negative count %d", n))
	}
	return n, nil
}

// decodeClaim reads the holder host of a claim.
func decodeClaim(key, v []byte) (string, error) {
	if err := validName("claim holder", string(v)); err != nil {
		return "", invalid(KindClaim, key, err)
	}
	return string(v), nil
}

func decodeInstance(kv *mvccpb.KeyValue, id string) (Instance, error) {
	var in Instance
	if err := decodeJSON(KindInstance, kv.Key, kv.Value, &in); err != nil {
		return Instance{}, err
	}
	if !in.State.known() {
		return Instance{}, corrupt(KindInstance, kv.Key, fmt.Errorf("unknown instance state %s", short(string(in.State))))
	}
	in.ID = id
	in.ModRevision = kv.ModRevision
	if err := validInstance(in); err != nil {
		return Instance{}, invalid(KindInstance, kv.Key, err)
	}
	return in, nil
}

// validInstance checks a stored instance: its names, which keys are built
// from (tickets, host index), and its numbers.
func validInstance(in Instance) error {
	err := firstErr(
		validID("instance id", in.ID),
		validNames("app name", in.App, "revision name", in.Rev, "process type", in.Proc),
		optName("instance host", in.Host),
		optID("instance ticket", in.Ticket),
		optID("instance stop ticket", in.StopTicket),
		optID("instance replaced by", in.ReplacedBy),
		optID("instance replaces", in.Replaces),
	)
	if err != nil {
		return err
	}
	if in.Port < 0 || in.Port > 65535 {
		return fmt.Errorf("%w: port %d out of range 0-65535", ErrInvalid, in.Port)
	}
	if in.PID < 0 || in.PIDStart < 0 {
		return fmt.Errorf("%w: negative pid %d or pid start %d", ErrInvalid, in.PID, in.PIDStart)
	}
	for reason, n := range in.Restarts {
		if n < 0 {
			return fmt.Errorf("%w: negative restart count %d for %s", ErrInvalid, n, short(reason))
		}
	}
	return nil
}

func decodeTicket(kv *mvccpb.KeyValue, id string) (Ticket, error) {
	var t Ticket
	if err := decodeJSON(KindTicket, kv.Key, kv.Value, &t); err != nil {
		return Ticket{}, err
	}
	if !t.Op.Valid() {
		return Ticket{}, corrupt(KindTicket, kv.Key, fmt.Errorf("unknown ticket op %s", short(string(t.Op))))
	}
	t.ID = id
	t.ModRevision = kv.ModRevision
	t.Holder = ""
	if err := validTicket(&t); err != nil {
		return Ticket{}, invalid(KindTicket, kv.Key, err)
	}
	return t, nil
}

// validTicket checks a stored ticket and normalizes its signal name.
func validTicket(t *Ticket) error {
	err := firstErr(
		validID("ticket id", t.ID),
		validNames("app name", t.App, "revision name", t.Rev, "process type", t.Proc),
		validID("ticket instance", t.Instance),
		optName("ticket host", t.Host),
		optID("ticket replaces", t.Replaces),
	)
	if err != nil {
		return err
	}
	for _, h := range t.FailedHosts {
		if err := validName("ticket failed host", h); err != nil {
			return err
		}
	}
	if t.Attempts < 0 || t.MaxAttempts < 0 {
		return fmt.Errorf("%w: negative attempts %d or max attempts %d", ErrInvalid, t.Attempts, t.MaxAttempts)
	}
	sig, err := normSignal("ticket signal", t.Signal)
	if err != nil {
		return err
	}
	switch {
	case t.Op == TicketSignal && sig == "":
		return fmt.Errorf("%w: signal ticket has no signal", ErrInvalid)
	case t.Op != TicketSignal && sig != "":
		return fmt.Errorf("%w: %s ticket has a signal", ErrInvalid, t.Op)
	}
	t.Signal = sig
	return nil
}

// decodeHost reads the host record of host id.
func decodeHost(kv *mvccpb.KeyValue, id string) (Host, error) {
	var h Host
	if err := decodeJSON(KindHost, kv.Key, kv.Value, &h); err != nil {
		return Host{}, err
	}
	if err := validName("host", id); err != nil {
		return Host{}, invalid(KindHost, kv.Key, err)
	}
	if h.Capacity < 0 || h.Load.Instances < 0 {
		return Host{}, corrupt(KindHost, kv.Key, fmt.Errorf("negative capacity %d or instance count %d", h.Capacity, h.Load.Instances))
	}
	h.ID, h.ModRevision, h.Lease = id, kv.ModRevision, kv.Lease
	return h, nil
}

// decodeDrain reads the drain record of host.
func decodeDrain(kv *mvccpb.KeyValue, host string) (Drain, error) {
	var d Drain
	if err := decodeJSON(KindDrain, kv.Key, kv.Value, &d); err != nil {
		return Drain{}, err
	}
	if err := validName("drain host", host); err != nil {
		return Drain{}, invalid(KindDrain, kv.Key, err)
	}
	d.Host = host
	return d, nil
}

// checkPage is how many keys Check reads per request.
const checkPage = 500

// Check reads every record under the prefix, at one revision, and returns
// those that do not decode or fail validation, in key order: what `visor
// doctor` lists. Keys in a record directory that do not fit the layout
// (instances/a/b, apps/web/revs/v1/x) are reported too; keys outside the
// known directories (leader, gen, services, ...) are not looked at.
func (r *Registry) Check(ctx context.Context) (BadRecords, error) {
	var bad BadRecords
	from, end := r.prefix, clientv3.GetPrefixRangeEnd(r.prefix)
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(checkPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := r.cli.Get(ctx, from, opts...)
		if err != nil {
			return nil, errorf("registry: check records: %w", err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if err := r.checkKV(kv); err != nil {
				var b BadRecord
				if !errors.As(err, &b) {
					b = BadRecord{Key: string(kv.Key), Kind: "unknown", Err: err}
				}
				bad = append(bad, b)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return bad, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// errLayout reports a key in a record directory that does not fit the
// key layout.
var errLayout = errors.New("key does not fit the registry layout")

// checkKV decodes one record by its key, as Check does.
func (r *Registry) checkKV(kv *mvccpb.KeyValue) error {
	p := strings.Split(r.rel(kv.Key), "/")
	layout := func(kind string) error { return corrupt(kind, kv.Key, errLayout) }
	switch p[0] {
	case "apps":
		switch {
		case len(p) == 2:
			_, err := decodeApp(kv.Value, kv.Key, p[1], kv.ModRevision)
			return err
		case len(p) < 3:
			return layout(KindApp)
		}
		kind := map[string]string{"env": KindEnv, "revs": KindRevision, "procs": KindProcType, "scale": KindScale}[p[2]]
		switch {
		case kind == "":
			return nil // not a record this version knows
		case kind == KindScale && len(p) == 5:
			if err := validNames("app name", p[1], "revision name", p[3], "process type", p[4]); err != nil {
				return invalid(KindScale, kv.Key, err)
			}
			_, err := decodeScale(kv.Key, kv.Value)
			return err
		case kind == KindScale || len(p) != 4:
			return layout(kind)
		case kind == KindEnv:
			_, err := decodeEnv(kv.Key, p[1], p[3], kv.Value)
			return err
		case kind == KindRevision:
			_, err := decodeRevision(kv.Key, kv.Value, kv.ModRevision, p[1], p[3])
			return err
		default:
			_, err := decodeProc(kv.Key, kv.Value, kv.ModRevision, p[1], p[3])
			return err
		}
	case "tickets":
		if len(p) != 2 {
			return layout(KindTicket)
		}
		_, err := decodeTicket(kv, p[1])
		return err
	case "claims":
		if len(p) != 2 {
			return layout(KindClaim)
		}
		if err := validID("claim ticket id", p[1]); err != nil {
			return invalid(KindClaim, kv.Key, err)
		}
		_, err := decodeClaim(kv.Key, kv.Value)
		return err
	case "instances":
		if len(p) != 2 {
			return layout(KindInstance)
		}
		_, err := decodeInstance(kv, p[1])
		return err
	case "hosts":
		switch {
		case len(p) == 2:
			_, err := decodeHost(kv, p[1])
			return err
		case len(p) == 4 && p[2] == "instances":
			return invalid(KindHostIndex, kv.Key, firstErr(validName("host", p[1]), validID("instance id", p[3])))
		}
		return layout(KindHostIndex)
	case "drains":
		if len(p) != 2 {
			return layout(KindDrain)
		}
		_, err := decodeDrain(kv, p[1])
		return err
	case "deploying", "deploys":
		if (p[0] == "deploying") != (len(p) == 2) || len(p) < 2 || len(p) > 3 {
			return layout(KindDeploy)
		}
		_, err := decodeDeploy(kv.Key, kv.Value, kv.ModRevision, p[1])
		return err
	}
	return nil
}
