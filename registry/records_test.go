package registry

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Hostile or broken records, one per kind: each must be skipped by the
// listings, named by Check, and never returned as a value.
var hostileRecords = []struct {
	key, kind, val, want string
}{
	{"apps/Broken", KindApp, `{}`, "app name"},
	{"apps/broken", KindApp, `{not json`, "invalid character"},
	{"apps/nulls", KindApp, `null`, "not a JSON object"},
	{"apps/web/env/A=B", KindEnv, `x`, "env key"},
	{"apps/web/env/NUL", KindEnv, "a\x00b", "NUL"},
	{"apps/web/revs/v9", KindRevision, `[]`, "not a JSON object"},
	{"apps/web/revs/v8", KindRevision, `{"dir":"/srv/../etc"}`, "clean absolute path"},
	{"apps/web/procs/bad", KindProcType, `{"restart":{"policy":"sometimes"}}`, "restart policy"},
	{"apps/web/procs/env", KindProcType, `{"env":{"X=Y":"1"}}`, "env key"},
	{"apps/web/scale/v1/broken", KindScale, `many`, "not a decimal"},
	{"apps/web/scale/v1/neg", KindScale, `-2`, "negative"},
	{"apps/web/scale/v1/a/b", KindScale, `1`, "layout"},
	{"tickets/0000000000000000bad", KindTicket, `{"op":"explode"}`, "explode"},
	{"tickets/0000000000000001bad", KindTicket, `{"op":"start","app":"web","rev":"v1","proc":"worker","instance":"../../x"}`, "ticket instance"},
	{"tickets/0000000000000002bad", KindTicket, `{"op":"signal","app":"web","rev":"v1","proc":"worker","instance":"web-worker-1","host":"h1","signal":"BOOM"}`, "signal"},
	{"tickets/0000000000000003bad", KindTicket, `{"op":"start","app":"web","rev":"v1","proc":"worker","instance":"web-worker-2","failed_hosts":["a/b"]}`, "failed host"},
	{"claims/0000000000000003bad", KindClaim, `Not A Host`, "claim holder"},
	{"instances/web-worker-bad", KindInstance, `{"state":"dancing"}`, "dancing"},
	{"instances/web-worker-port", KindInstance, `{"app":"web","rev":"v1","proc":"worker","state":"running","host":"h1","port":70000}`, "port"},
	{"instances/web-worker-host", KindInstance, `{"app":"web","rev":"v1","proc":"worker","state":"running","host":"../h1"}`, "instance host"},
	{"instances/Web-worker-id", KindInstance, `{"app":"web","rev":"v1","proc":"worker","state":"pending"}`, "instance id"},
	{"hosts/x", KindHost, `garbage`, "not a JSON object"},
	{"hosts/y", KindHost, `{"capacity":-1}`, "negative capacity"},
	{"hosts/h1/instances/A", KindHostIndex, ``, "instance id"},
	{"drains/z", KindDrain, `{"since":"yesterday"}`, "cannot parse"},
}

// putBad writes every bad record and returns their full keys.
func putBad(t *testing.T, r *Registry) map[string]string {
	t.Helper()
	ctx := testCtx(t)
	keys := map[string]string{}
	for _, b := range hostileRecords {
		_, err := r.cli.Put(ctx, r.Prefix()+b.key, b.val)
		must(t, err)
		keys[r.Prefix()+b.key] = b.kind
	}
	return keys
}

func TestCheckNamesEveryBadRecord(t *testing.T) {
	r, _, ctx := setupWeb(t)
	h := register(t, r, "h1")
	runNew(t, r, h)
	must(t, r.SetEnv(ctx, "web", map[string]string{"GOOD": "1"}))
	if _, err := r.Drain(ctx, "h1", 0); !errors.Is(err, ErrLastHost) {
		t.Fatalf("drain of the last host: %v", err)
	}
	bad, err := r.Check(ctx)
	must(t, err)
	if len(bad) != 0 {
		t.Fatalf("a registry written by its own writers has bad records: %v", bad)
	}

	want := putBad(t, r)
	bad, err = r.Check(ctx)
	must(t, err)
	got := map[string]string{}
	for _, b := range bad {
		got[b.Key] = b.Kind
		if !errors.Is(b, ErrCorrupt) {
			t.Errorf("%s: %v does not match ErrCorrupt", b.Key, b)
		}
	}
	for k, kind := range want {
		if got[k] != kind {
			t.Errorf("Check: %s reported as %q, want %q", k, got[k], kind)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("Check reported a good record: %s", k)
		}
	}
	if !slices.IsSortedFunc(bad, func(a, b BadRecord) int { return strings.Compare(a.Key, b.Key) }) {
		t.Error("Check's records are not in key order")
	}
	for _, b := range hostileRecords {
		i := slices.IndexFunc(bad, func(x BadRecord) bool { return x.Key == r.Prefix()+b.key })
		if i >= 0 && !strings.Contains(bad[i].Error(), b.want) {
			t.Errorf("%s: error %q does not say %q", b.key, bad[i].Err, b.want)
		}
	}
}

// Check reads page by page at one revision: more bad records than a page
// are all reported once.
func TestCheckPages(t *testing.T) {
	r, _, ctx := setupWeb(t)
	n := checkPage + 7
	for i := range n {
		_, err := r.cli.Put(ctx, r.instanceKey(fmt.Sprintf("web-worker-%04d", i)), "{")
		must(t, err)
	}
	bad, err := r.Check(ctx)
	must(t, err)
	if len(bad) != n {
		t.Fatalf("Check found %d bad records, want %d", len(bad), n)
	}
}

func TestListingsSkipBadRecords(t *testing.T) {
	r, _, ctx := setupWeb(t)
	h := register(t, r, "h1")
	good := runNew(t, r, h)
	res, err := r.Scale(ctx, "web", "v1", "worker", 2)
	must(t, err)
	must(t, r.SetEnv(ctx, "web", map[string]string{"GOOD": "1"}))
	putBad(t, r)

	// skipped checks that err reports only skipped records of kind, each
	// under the registry's prefix.
	skipped := func(what string, err error, kinds ...string) {
		t.Helper()
		bad, rest := Skipped(err)
		if rest != nil {
			t.Fatalf("%s: %v, want only skipped records", what, rest)
		}
		if len(bad) == 0 {
			t.Fatalf("%s: no skipped records reported", what)
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v does not match ErrCorrupt", what, err)
		}
		for _, b := range bad {
			if !slices.Contains(kinds, b.Kind) || !strings.HasPrefix(b.Key, r.Prefix()) {
				t.Errorf("%s: skipped %s %s, want kinds %v", what, b.Kind, b.Key, kinds)
			}
		}
	}

	insts, err := r.Instances(ctx)
	skipped("instances", err, KindInstance)
	if len(insts) != 2 || !slices.ContainsFunc(insts, func(in Instance) bool { return in.ID == good.ID }) {
		t.Errorf("instances = %+v, want the 2 good ones", insts)
	}
	hosts, err := r.Hosts(ctx)
	skipped("hosts", err, KindHost, KindDrain)
	if len(hosts) != 1 || hosts[0].ID != "h1" {
		t.Errorf("hosts = %+v, want h1", hosts)
	}
	ts, err := r.Tickets(ctx)
	skipped("tickets", err, KindTicket, KindClaim)
	if len(ts) != 1 || ts[0].ID != res.Started[0] {
		t.Errorf("tickets = %+v, want the one start ticket", ts)
	}
	scales, err := r.Scales(ctx, "")
	skipped("scales", err, KindScale)
	if len(scales) != 1 || scales[0].Desired != 2 {
		t.Errorf("scales = %+v", scales)
	}
	apps, err := r.Apps(ctx)
	skipped("apps", err, KindApp)
	if len(apps) != 1 || apps[0].Name != "web" {
		t.Errorf("apps = %+v", apps)
	}
	env, err := r.Env(ctx, "web")
	skipped("env", err, KindEnv)
	if len(env) != 1 || env["GOOD"] != "1" {
		t.Errorf("env = %v", env)
	}
	_, err = r.EnvVar(ctx, "web", "NUL")
	mustIs(t, err, ErrCorrupt)
	revs, err := r.Revisions(ctx, "web")
	skipped("revisions", err, KindRevision)
	if len(revs) != 1 {
		t.Errorf("revisions = %+v", revs)
	}
	procs, err := r.ProcTypes(ctx, "web")
	skipped("procs", err, KindProcType)
	if len(procs) != 1 {
		t.Errorf("procs = %+v", procs)
	}
	drains, err := r.Drains(ctx)
	skipped("drains", err, KindDrain)
	if len(drains) != 0 {
		t.Errorf("drains = %+v", drains)
	}
	// A single read of a bad record fails naming it.
	_, err = r.Instance(ctx, "web-worker-port")
	var b BadRecord
	if !errors.As(err, &b) || b.Kind != KindInstance || !strings.HasSuffix(b.Key, "instances/web-worker-port") {
		t.Errorf("Instance(bad) = %v, want a BadRecord", err)
	}
	// A real failure is not taken for skipped records.
	_, err = r.Env(ctx, "nope")
	if bad, rest := Skipped(err); bad != nil || !errors.Is(rest, ErrNotFound) {
		t.Errorf("Skipped(not found) = %v, %v", bad, rest)
	}
}

// An env var whose key holds "=" (written into etcd by hand) would set
// another variable than the one named: Launch leaves it out and says so.
func TestLaunchSkipsBadEnv(t *testing.T) {
	r, _, ctx := setupWeb(t)
	must(t, r.SetEnv(ctx, "web", map[string]string{"GOOD": "1"}))
	for k, v := range map[string]string{"PATH=/tmp/evil:": "x", "BAD": "a\x00b"} {
		_, err := r.cli.Put(ctx, r.envKey("web", k), v)
		must(t, err)
	}
	l, err := r.Launch(ctx, "web", "v1", "worker")
	bad, rest := Skipped(err)
	must(t, rest)
	if len(bad) != 2 || bad[0].Kind != KindEnv || bad[1].Kind != KindEnv {
		t.Fatalf("skipped = %v, want the two env vars", bad)
	}
	if len(l.Env) != 1 || l.Env["GOOD"] != "1" || l.ProcType.Name != "worker" || l.Revision.Name != "v1" {
		t.Errorf("launch = %+v", l)
	}
	// Writers refuse what the readers would skip.
	mustIs(t, r.SetEnv(ctx, "web", map[string]string{"A=B": "1"}), ErrInvalid)
	mustIs(t, r.SetEnv(ctx, "web", map[string]string{"A": "a\x00"}), ErrInvalid)
	_, err = r.SetProcType(ctx, ProcType{App: "web", Name: "worker", Env: map[string]string{"A": "\x00"}})
	mustIs(t, err, ErrInvalid)
}

func TestSkipped(t *testing.T) {
	bs := BadRecords{{Key: "/visor/instances/x", Kind: KindInstance, Err: errors.New("bad")}}
	other := errors.New("etcd unreachable")
	cases := []struct {
		name     string
		err      error
		bad      int
		restNil  bool
		restIs   error
		corruptI bool
	}{
		{"nil", nil, 0, true, nil, false},
		{"bad records", bs, 1, true, nil, true},
		{"wrapped", fmt.Errorf("list: %w", bs), 1, true, nil, true},
		{"other", other, 0, false, other, false},
		{"joined with another", errors.Join(bs, other), 1, false, other, true},
		{"one bad record", BadRecord{Kind: KindHost, Err: other}, 0, false, ErrCorrupt, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad, rest := Skipped(tc.err)
			if len(bad) != tc.bad || (rest == nil) != tc.restNil {
				t.Fatalf("Skipped = %v, %v", bad, rest)
			}
			if tc.restIs != nil && !errors.Is(rest, tc.restIs) {
				t.Errorf("rest %v is not %v", rest, tc.restIs)
			}
			if errors.Is(tc.err, ErrCorrupt) != tc.corruptI {
				t.Errorf("errors.Is(ErrCorrupt) = %v", !tc.corruptI)
			}
		})
	}
	many := append(BadRecords{}, bs[0], bs[0], bs[0], bs[0], bs[0])
	if msg := many.Error(); !strings.Contains(msg, "5 records skipped") || !strings.Contains(msg, "and 2 more") {
		t.Errorf("message %q", msg)
	}
}

// Records that decode must survive a round trip through their writers'
// encoding; a table of the checks decoders make beyond JSON.
func TestDecodersValidate(t *testing.T) {
	kv := func(v string) *mvccpb.KeyValue { return &mvccpb.KeyValue{Key: []byte("/visor/x"), Value: []byte(v)} }
	inst := func(extra string) string {
		return `{"app":"web","rev":"v1","proc":"worker","state":"running","host":"h1"` + extra + `}`
	}
	ticket := func(extra string) string {
		return `{"op":"stop","app":"web","rev":"v1","proc":"worker","instance":"web-worker-1","host":"h1"` + extra + `}`
	}
	cases := []struct {
		name string
		err  error
	}{
		{"good instance", second(decodeInstance(kv(inst("")), "web-worker-1"))},
		{"negative pid", second(decodeInstance(kv(inst(`,"pid":-1`)), "web-worker-1"))},
		{"negative restarts", second(decodeInstance(kv(inst(`,"restarts":{"fail":-3}`)), "web-worker-1"))},
		{"bad stop ticket", second(decodeInstance(kv(inst(`,"stop_ticket":"a/b"`)), "web-worker-1"))},
		{"instance without app", second(decodeInstance(kv(`{"state":"pending"}`), "web-worker-1"))},
		{"good ticket", second(decodeTicket(kv(ticket("")), "0001"))},
		{"negative attempts", second(decodeTicket(kv(ticket(`,"attempts":-1`)), "0001"))},
		{"stop with signal", second(decodeTicket(kv(ticket(`,"signal":"TERM"`)), "0001"))},
		{"ticket host", second(decodeTicket(kv(ticket(`,"host":"H 1"`)), "0001"))},
		{"trailing data", second(decodeTicket(kv(ticket("")+"x"), "0001"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			good := strings.HasPrefix(tc.name, "good")
			if good != (tc.err == nil) {
				t.Fatalf("err = %v", tc.err)
			}
			if !good && !errors.Is(tc.err, ErrCorrupt) {
				t.Errorf("%v is not ErrCorrupt", tc.err)
			}
		})
	}
	// A signal ticket's signal is normalized as CreateTicket does.
	tk, err := decodeTicket(kv(`{"op":"signal","app":"web","rev":"v1","proc":"worker","instance":"web-worker-1","host":"h1","signal":"sigusr1"}`), "0001")
	must(t, err)
	if tk.Signal != "USR1" {
		t.Errorf("signal = %q", tk.Signal)
	}
}

func second[T any](_ T, err error) error { return err }

// TestTicketOpValid: the four ops are valid and nothing else is, and the
// stored-ticket decoder and the claim both refuse an unknown op.
func TestTicketOpValid(t *testing.T) {
	for _, op := range []TicketOp{TicketStart, TicketStop, TicketRestart, TicketSignal} {
		if !op.Valid() {
			t.Errorf("%q.Valid() = false", op)
		}
	}
	stop := &mvccpb.KeyValue{Key: []byte("/visor/tickets/0001"), ModRevision: 3,
		Value: []byte(`{"op":"stop","app":"web","rev":"v1","proc":"worker","instance":"web-worker-1","host":"h1"}`)}
	if tk, err := decodeTicket(stop, "0001"); err != nil || tk.Op != TicketStop {
		t.Fatalf("decodeTicket of a stop ticket = %+v, %v", tk, err)
	}
	for _, op := range []TicketOp{"", "START", "kill", "start ", "explode"} {
		if op.Valid() {
			t.Errorf("%q.Valid() = true", op)
		}
		kv := &mvccpb.KeyValue{Key: []byte("/visor/tickets/0001"), ModRevision: 3,
			Value: []byte(`{"op":"` + string(op) + `","app":"web","rev":"v1","proc":"worker","instance":"web-worker-1","host":"h1"}`)}
		if _, err := decodeTicket(kv, "0001"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decodeTicket with op %q = %v, want ErrCorrupt", op, err)
		}
		s := &HostSession{id: "h1"}
		_, err := s.claimTxn(Ticket{ID: "0001", Op: op, App: "web", Rev: "v1", Proc: "worker", Instance: "web-worker-1", ModRevision: 3})
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("claim of a ticket with op %q = %v, want ErrInvalid", op, err)
		}
	}
}
