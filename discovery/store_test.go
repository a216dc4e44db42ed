package discovery

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/visorhq/visor/internal/testtime"
)

func ids(eps []Endpoint) []string {
	out := make([]string, len(eps))
	for i, e := range eps {
		out[i] = e.ID
	}
	return out
}

func sameIDs(got []Endpoint, want ...string) bool {
	g := ids(got)
	if len(g) != len(want) {
		return false
	}
	for i := range g {
		if g[i] != want[i] {
			return false
		}
	}
	return true
}

func TestStorePutLookupDelete(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.store
	for _, e := range []Endpoint{
		instanceEndpoint("web.api", "1.2.0", "web-api-1", "10.0.0.1", 8001, true),
		instanceEndpoint("web.api", "1.3.5", "web-api-2", "10.0.0.2", 8002, true),
		instanceEndpoint("web.api", "2.0.0", "web-api-3", "10.0.0.3", 8003, true),
		instanceEndpoint("web.api", "1.2.7", "web-api-4", "10.0.0.4", 8004, false),
		instanceEndpoint("web.api", "a1b2c3d", "web-api-5", "10.0.0.5", 8005, true),
		instanceEndpoint("web.apix", "1.2.0", "web-apix-1", "10.0.0.9", 8009, true),
	} {
		if err := s.Put(f.ctx, e, 0); err != nil {
			t.Fatalf("put %s: %v", e.ID, err)
		}
	}
	cases := []struct {
		name, query string
		healthy     bool
		want        []string
	}{
		{"all", "", false, []string{"web-api-1", "web-api-2", "web-api-3", "web-api-4", "web-api-5"}},
		{"healthy", "", true, []string{"web-api-1", "web-api-2", "web-api-3", "web-api-5"}},
		{"caret", "^1.2", false, []string{"web-api-1", "web-api-2", "web-api-4"}},
		{"caret healthy", "^1.2", true, []string{"web-api-1", "web-api-2"}},
		{"tilde", "~1.2", false, []string{"web-api-1", "web-api-4"}},
		{"exact", "1.3.5", false, []string{"web-api-2"}},
		{"range", ">=1.3 <3", false, []string{"web-api-2", "web-api-3"}},
		{"non-semver exact", "a1b2c3d", false, []string{"web-api-5"}},
		{"no match", "^9", false, []string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Lookup(f.ctx, "web.api", tc.query, tc.healthy)
			if err != nil {
				t.Fatalf("lookup: %v", err)
			}
			if !sameIDs(got, tc.want...) {
				t.Fatalf("lookup web.api %q healthy=%v = %v, want %v", tc.query, tc.healthy, ids(got), tc.want)
			}
		})
	}

	got, err := s.Lookup(f.ctx, "web.api", "1.2.0", false)
	if err != nil || len(got) != 1 {
		t.Fatalf("lookup exact: %v %v", got, err)
	}
	e := got[0]
	if e.Service != "web.api" || e.Addr != "10.0.0.1" || e.Port != 8001 || e.Host != "h1" || e.Source != SourceInstance || e.Registered.IsZero() || e.ModRevision == 0 {
		t.Fatalf("endpoint fields not round-tripped: %+v", e)
	}

	names, err := s.Services(f.ctx)
	if err != nil || fmt.Sprint(names) != "[web.api web.apix]" {
		t.Fatalf("services = %v, %v", names, err)
	}

	if err := s.Delete(f.ctx, "web.api", "web-api-1"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := s.Delete(f.ctx, "web.api", "web-api-1"); err != nil {
		t.Fatalf("delete again: %v", err)
	}
	got, err = s.Lookup(f.ctx, "web.api", "^1.2", false)
	if err != nil || !sameIDs(got, "web-api-2", "web-api-4") {
		t.Fatalf("after delete: %v %v", ids(got), err)
	}

	for _, bad := range []struct{ name, query string }{{"../x", ""}, {"Web", ""}, {"", ""}, {"web.api", ">=foo"}} {
		if _, err := s.Lookup(f.ctx, bad.name, bad.query, false); !errors.Is(err, ErrInvalid) {
			t.Errorf("lookup %q %q = %v, want ErrInvalid", bad.name, bad.query, err)
		}
	}
	if err := s.Put(f.ctx, instanceEndpoint("a/b", "", "x", "10.0.0.1", 1, true), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("put bad name = %v, want ErrInvalid", err)
	}
}

func TestStoreSkipsUndecodableValues(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if err := f.store.Put(f.ctx, instanceEndpoint("web.api", "1", "good", "10.0.0.1", 80, true), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cli.Put(f.ctx, f.prefix+"services/web.api/bad", "{not json"); err != nil {
		t.Fatal(err)
	}
	got, err := f.store.Lookup(f.ctx, "web.api", "", false)
	if err != nil || !sameIDs(got, "good") {
		t.Fatalf("lookup = %v, %v; want only the decodable endpoint", ids(got), err)
	}
}

func TestStoreLeaseLossFreesEndpoints(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.store
	lease, err := f.cli.Grant(f.ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	start := f.revision(t) + 1
	for i := range 3 {
		if err := s.Put(f.ctx, instanceEndpoint("web.api", "1", fmt.Sprintf("h1-%d", i), "10.0.0.1", 8000+i, true), lease.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put(f.ctx, instanceEndpoint("web.api", "1", "h2-0", "10.0.0.2", 8000, true), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.cli.Revoke(f.ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	got, err := s.Lookup(f.ctx, "web.api", "", false)
	if err != nil || !sameIDs(got, "h2-0") {
		t.Fatalf("after host lease revoked: %v %v", ids(got), err)
	}

	// The watch sees the three frees at one revision, with their last values.
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	events := s.Watch(ctx, "web.api", start)
	var frees []Event
	for len(frees) < 3 {
		select {
		case ev := <-events:
			if ev.Err != nil {
				t.Fatalf("watch: %v", ev.Err)
			}
			if ev.Type == EventFree {
				frees = append(frees, ev)
			}
		case <-ctx.Done():
			t.Fatal("watch ended before the frees arrived")
		}
	}
	for i, ev := range frees {
		if ev.Revision != frees[0].Revision || ev.Endpoint.Addr != "10.0.0.1" || ev.Endpoint.ID != fmt.Sprintf("h1-%d", i) {
			t.Fatalf("free %d = %+v", i, ev)
		}
	}
}

func TestStoreWatchInOrderAndResumes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.store
	from := f.revision(t) + 1

	// A scripted history: puts, updates, deletes, a bad value, another service.
	type step struct {
		typ EventType
		id  string
	}
	var want []step
	for i := range 20 {
		id := fmt.Sprintf("e%02d", i%7)
		switch i % 4 {
		case 3:
			if err := s.Delete(f.ctx, "web.api", id); err != nil {
				t.Fatal(err)
			}
		default:
			if err := s.Put(f.ctx, instanceEndpoint("web.api", fmt.Sprint(i), id, "10.0.0.1", 8000+i, true), 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Put(f.ctx, instanceEndpoint("other", "1", fmt.Sprintf("o%d", i), "10.0.0.1", 1, true), 0); err != nil {
			t.Fatal(err)
		}
	}
	// Expected events: every put, and a delete only of a present key.
	present := map[string]bool{}
	for i := range 20 {
		id := fmt.Sprintf("e%02d", i%7)
		if i%4 == 3 {
			if present[id] {
				want = append(want, step{EventFree, id})
				present[id] = false
			}
			continue
		}
		want = append(want, step{EventRegister, id})
		present[id] = true
	}
	if _, err := f.cli.Put(f.ctx, f.prefix+"services/web.api/bad", "{not json"); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(f.ctx, instanceEndpoint("web.api", "9", "last", "10.0.0.1", 9, true), 0); err != nil {
		t.Fatal(err)
	}
	want = append(want, step{EventRegister, "last"})

	collect := func(from int64, n int) []Event {
		t.Helper()
		ctx, cancel := context.WithTimeout(f.ctx, testtime.Scaled(10*time.Second))
		defer cancel()
		events := s.Watch(ctx, "web.api", from)
		var got []Event
		bad := 0
		for len(got) < n {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("watch closed after %d events", len(got))
				}
				if ev.Err != nil {
					if !errors.Is(ev.Err, ErrInvalid) || ev.Endpoint.ID != "bad" {
						t.Fatalf("unexpected watch error: %v", ev.Err)
					}
					bad++
					continue
				}
				got = append(got, ev)
			case <-ctx.Done():
				t.Fatalf("timed out with %d of %d events", len(got), n)
			}
		}
		if bad != 1 {
			t.Fatalf("bad value reported %d times, want 1", bad)
		}
		return got
	}

	all := collect(from, len(want))
	for i, ev := range all {
		if ev.Type != want[i].typ || ev.Endpoint.ID != want[i].id {
			t.Fatalf("event %d = %s %s, want %s %s", i, ev.Type, ev.Endpoint.ID, want[i].typ, want[i].id)
		}
		if i > 0 && ev.Revision <= all[i-1].Revision {
			t.Fatalf("event %d revision %d not after %d", i, ev.Revision, all[i-1].Revision)
		}
	}
	// Resume after the 8th event: exactly the rest, in order.
	k := 8
	rest := collect(all[k-1].Revision+1, len(all)-k)
	for i, ev := range rest {
		if ev.Revision != all[k+i].Revision || ev.Type != all[k+i].Type || ev.Endpoint.ID != all[k+i].Endpoint.ID {
			t.Fatalf("resumed event %d = %+v, want %+v", i, ev, all[k+i])
		}
	}
}

func TestStoreWatchCompacted(t *testing.T) {
	t.Parallel()
	f := newOwnFixture(t)
	from := f.revision(t) + 1
	for i := range 3 {
		if err := f.store.Put(f.ctx, instanceEndpoint("web.api", "1", fmt.Sprint(i), "10.0.0.1", 80, true), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.cli.Compact(f.ctx, f.revision(t), clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(f.ctx, testtime.Scaled(10*time.Second))
	defer cancel()
	events := f.store.Watch(ctx, "web.api", from)
	ev := <-events
	if !errors.Is(ev.Err, ErrCompacted) {
		t.Fatalf("first event = %+v, want ErrCompacted", ev)
	}
	if _, ok := <-events; ok {
		t.Fatal("watch channel still open after ErrCompacted")
	}
}

func TestStoreSyncHost(t *testing.T) {
	t.Parallel()
	f := newOwnFixture(t)
	s := f.store
	lease1, err := f.cli.Grant(f.ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	a := InstanceEndpoint("web", "v1", "api", "web-api-1", "h1", "10.0.0.1", 8001, true)
	b := InstanceEndpoint("web", "v1", "api", "web-api-2", "h1", "10.0.0.1", 8002, true)
	other := InstanceEndpoint("web", "v1", "api", "web-api-3", "h2", "10.0.0.2", 8001, true)
	ext := Endpoint{Service: "web.api", ID: "x1", Host: "h1", Addr: "192.0.2.1", Port: 1, Source: SourceExternal}
	for _, e := range []Endpoint{a, b, other, ext} {
		if err := s.Put(f.ctx, e, 0); err != nil {
			t.Fatal(err)
		}
	}
	// h1 now runs only web-api-1 (web-api-2 stopped while the agent was
	// away) and has a new lease.
	put, deleted, err := s.SyncHost(f.ctx, "h1", lease1.ID, []Endpoint{a})
	if err != nil || put != 1 || deleted != 1 {
		t.Fatalf("sync = %d put, %d deleted, %v; want 1, 1", put, deleted, err)
	}
	got, err := s.Lookup(f.ctx, "web.api", "", false)
	if err != nil || !sameIDs(got, "web-api-1", "web-api-3", "x1") {
		t.Fatalf("after sync: %v, %v", ids(got), err)
	}
	// Nothing changed: no writes.
	before := f.revision(t)
	if put, deleted, err := s.SyncHost(f.ctx, "h1", lease1.ID, []Endpoint{a}); err != nil || put != 0 || deleted != 0 {
		t.Fatalf("idle sync = %d put, %d deleted, %v", put, deleted, err)
	}
	if after := f.revision(t); after != before {
		t.Fatalf("idle sync wrote: revision %d -> %d", before, after)
	}
	// The endpoint is on h1's lease: losing the host removes it.
	if _, err := f.cli.Revoke(f.ctx, lease1.ID); err != nil {
		t.Fatal(err)
	}
	got, err = s.Lookup(f.ctx, "web.api", "", false)
	if err != nil || !sameIDs(got, "web-api-3", "x1") {
		t.Fatalf("after host loss: %v, %v", ids(got), err)
	}
	if _, _, err := s.SyncHost(f.ctx, "h1", 0, []Endpoint{other}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("sync with another host's endpoint = %v, want ErrInvalid", err)
	}
}
