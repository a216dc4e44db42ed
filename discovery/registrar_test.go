package discovery

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
)

func externalEndpoint(service, version string, port int) Endpoint {
	return Endpoint{Service: service, Version: version, Addr: "192.0.2.10", Port: port}
}

func TestRegistrarExpiresWithoutRenewal(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	reg := NewRegistrar(f.store, 0, RegistrarConfig{Host: "h1", Logger: testLogger(t)})
	runRegistrar(t, reg)

	ep, err := reg.Register(f.ctx, "client-a", externalEndpoint("payments", "1.0.0", 9000), time.Second)
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	if ep.ID == "" || ep.Source != SourceExternal || !ep.Healthy || ep.Host != "h1" || time.Until(ep.Expires) > time.Second {
		t.Fatalf("registered endpoint = %+v", ep)
	}
	got, err := f.store.Lookup(f.ctx, "payments", "^1", true)
	if err != nil || !sameIDs(got, ep.ID) {
		t.Fatalf("lookup after register = %v, %v", ids(got), err)
	}
	proctest.WaitFor(t, 5*time.Second, "the unrenewed registration to expire", func() bool {
		return f.keys(t) == 0
	})
	if reg.Len() != 0 {
		t.Fatalf("registrar still holds %d registrations", reg.Len())
	}
	if _, err := reg.Renew(f.ctx, ep.ID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("renew after expiry = %v, want ErrUnknown", err)
	}
}

// TestRegistrarSurvivesWhenRenewedWithoutWrites registers a, then b, with
// the same TTL, and renews only a until b expires. b's deadline is later
// than a's first one, so a outlived its first deadline only by its
// renewals; they wrote nothing to etcd (b's delete is the only write). The
// TTL is long enough that a stall of the test of up to 90% of it between
// two renewals does not expire a.
func TestRegistrarSurvivesWhenRenewedWithoutWrites(t *testing.T) {
	t.Parallel()
	f := newOwnFixture(t)
	reg := NewRegistrar(f.store, 0, RegistrarConfig{Logger: testLogger(t)})
	runRegistrar(t, reg)

	ttl := testtime.Scaled(3 * time.Second)
	a, err := reg.Register(f.ctx, "client-a", externalEndpoint("payments", "1.0.0", 9000), ttl)
	if err != nil {
		t.Fatalf("register a: %v", err)
	}
	b, err := reg.Register(f.ctx, "client-b", externalEndpoint("payments", "1.0.0", 9001), ttl)
	if err != nil {
		t.Fatalf("register b: %v", err)
	}
	before := f.revision(t)
	beat := time.NewTicker(ttl / 10)
	defer beat.Stop()
	timeout := time.NewTimer(ttl + testtime.Scaled(10*time.Second))
	defer timeout.Stop()
	renewed, renewals := a, 0
	for {
		if _, ok := reg.Registration(b.ID); !ok {
			break
		}
		select {
		case <-beat.C:
			ep, err := reg.Renew(f.ctx, a.ID)
			if err != nil {
				t.Fatalf("renew %d of a: %v", renewals+1, err)
			}
			renewed, renewals = ep, renewals+1
		case <-timeout.C:
			t.Fatalf("b did not expire within %v of its TTL %v", timeout, ttl)
		}
	}
	proctest.WaitFor(t, 10*time.Second, "b's key deleted", func() bool { return f.keys(t) == 1 })
	if _, ok := reg.Registration(a.ID); !ok {
		t.Fatalf("a expired with b although it was renewed %d times", renewals)
	}
	if !renewed.Expires.After(b.Expires) {
		t.Fatalf("after %d renewals a expires at %v, not after b's deadline %v", renewals, renewed.Expires, b.Expires)
	}
	if after := f.revision(t); after != before+1 {
		t.Fatalf("%d renewals and one expiry moved the etcd revision from %d to %d; want one write (the expiry)", renewals, before, after)
	}
	// Stop renewing: it goes.
	proctest.WaitFor(t, ttl+10*time.Second, "expiry after renewals stop", func() bool { return f.keys(t) == 0 })
}

func TestRegistrarFreeAndCap(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	reg := NewRegistrar(f.store, 0, RegistrarConfig{MaxPerClient: 3, Logger: testLogger(t)})
	runRegistrar(t, reg)

	var held []Endpoint
	for range 3 {
		ep, err := reg.Register(f.ctx, "flood", externalEndpoint("svc", "", 1000), 0)
		if err != nil {
			t.Fatalf("register: %v", err)
		}
		held = append(held, ep)
	}
	if time.Until(held[0].Expires) < 29*time.Second {
		t.Fatalf("default TTL not applied: expires %v", held[0].Expires)
	}
	if _, err := reg.Register(f.ctx, "flood", externalEndpoint("svc", "", 1000), 0); !errors.Is(err, ErrLimit) {
		t.Fatalf("register over the cap = %v, want ErrLimit", err)
	}
	if n := f.keys(t); n != 3 {
		t.Fatalf("%d keys stored, want 3", n)
	}
	if _, err := reg.Register(f.ctx, "other", externalEndpoint("svc", "", 1000), 0); err != nil {
		t.Fatalf("another client is not capped: %v", err)
	}
	if err := reg.Free(f.ctx, held[0].ID); err != nil {
		t.Fatalf("free: %v", err)
	}
	if err := reg.Free(f.ctx, held[0].ID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("free twice = %v, want ErrUnknown", err)
	}
	if _, err := reg.Register(f.ctx, "flood", externalEndpoint("svc", "", 1000), 0); err != nil {
		t.Fatalf("register after free: %v", err)
	}
	if n := f.keys(t); n != 4 {
		t.Fatalf("%d keys stored, want 4", n)
	}
}

func TestRegistrarRejectsBadInput(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	reg := NewRegistrar(f.store, 0, RegistrarConfig{MaxMetaBytes: 64, Logger: testLogger(t)})
	cases := []struct {
		name string
		e    Endpoint
		ttl  time.Duration
		want error
	}{
		{"bad name", externalEndpoint("../x", "", 80), 0, ErrInvalid},
		{"bad version", externalEndpoint("svc", "1 2", 80), 0, ErrInvalid},
		{"port zero", externalEndpoint("svc", "", 0), 0, ErrInvalid},
		{"port high", externalEndpoint("svc", "", 70000), 0, ErrInvalid},
		{"ttl short", externalEndpoint("svc", "", 80), time.Millisecond, ErrInvalid},
		{"ttl long", externalEndpoint("svc", "", 80), 48 * time.Hour, ErrInvalid},
		{"meta big", Endpoint{Service: "svc", Addr: "192.0.2.1", Port: 80, Meta: map[string]string{"k": string(make([]byte, 100))}}, 0, ErrTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := reg.Register(f.ctx, "c", tc.e, tc.ttl); !errors.Is(err, tc.want) {
				t.Fatalf("register = %v, want %v", err, tc.want)
			}
		})
	}
	if n := f.keys(t); n != 0 || reg.Len() != 0 {
		t.Fatalf("bad input stored %d keys, %d registrations", n, reg.Len())
	}
}

func TestRegistrarSharedLease(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	lease1, err := f.cli.Grant(f.ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	reg := NewRegistrar(f.store, lease1.ID, RegistrarConfig{Logger: testLogger(t)})
	runRegistrar(t, reg)
	for range 5 {
		if _, err := reg.Register(f.ctx, "c", externalEndpoint("svc", "1", 80), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	ttl, err := f.cli.TimeToLive(f.ctx, lease1.ID, clientOptAttachedKeys())
	if err != nil || len(ttl.Keys) != 5 {
		t.Fatalf("lease holds %d keys (%v), want all 5 registrations on the one lease", len(ttl.Keys), err)
	}
	// The agent's lease is lost: everything goes with it.
	if _, err := f.cli.Revoke(f.ctx, lease1.ID); err != nil {
		t.Fatal(err)
	}
	if n := f.keys(t); n != 0 {
		t.Fatalf("%d keys survived the lease", n)
	}
	// The agent got a new lease: the registrar puts them back.
	lease2, err := f.cli.Grant(f.ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	reg.SetLease(lease2.ID)
	proctest.WaitFor(t, 5*time.Second, "registrations re-put with the new lease", func() bool { return f.keys(t) == 5 })
	ttl, err = f.cli.TimeToLive(f.ctx, lease2.ID, clientOptAttachedKeys())
	if err != nil || len(ttl.Keys) != 5 {
		t.Fatalf("new lease holds %d keys (%v), want 5", len(ttl.Keys), err)
	}
}

func TestRegistrarRunReturnsOnCancel(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	reg := NewRegistrar(f.store, 0, RegistrarConfig{})
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	if _, err := reg.Register(f.ctx, "c", externalEndpoint("svc", "1", 80), time.Minute); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil on cancel", err)
		}
	case <-time.After(testtime.Scaled(5 * time.Second)):
		t.Fatal("Run did not return after cancel")
	}
}

func TestRegistrarConcurrentFloodStopsAtCap(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	reg := NewRegistrar(f.store, 0, RegistrarConfig{MaxPerClient: 5, Logger: testLogger(t)})
	runRegistrar(t, reg)
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			_, err := reg.Register(f.ctx, "flood", externalEndpoint("svc", "1", 80), time.Minute)
			errs <- err
		}()
	}
	ok, limited := 0, 0
	for range 20 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case errors.Is(err, ErrLimit):
			limited++
		default:
			t.Fatalf("register: %v", err)
		}
	}
	if ok != 5 || limited != 15 {
		t.Fatalf("%d registered, %d limited; want 5 and 15", ok, limited)
	}
	if n := f.keys(t); n != 5 {
		t.Fatalf("%d keys stored, want 5", n)
	}
}
