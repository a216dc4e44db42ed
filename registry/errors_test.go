package registry

import (
	"errors"
	"strings"
	"testing"
)

// prefixOnce fails unless err's message names the package once, at its
// start (issue 15: "registry: … (registry: not found)").
func prefixOnce(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, errPrefix) || strings.Count(msg, "registry:") != 1 {
		t.Errorf("%q: want %q once, at the start", msg, errPrefix)
	}
}

func TestErrorfPrefixesOnce(t *testing.T) {
	inner := errorf("%w: instance %q", ErrNotFound, "web-worker-1") // as r.Instance words it
	err := errorf("registry: complete ticket %s: %w (%w): %w", "01", ErrTicketDone, ErrNotFound, inner)
	want := `registry: complete ticket 01: ticket done or cancelled (not found): not found: instance "web-worker-1"`
	if err.Error() != want {
		t.Errorf("errorf = %q, want %q", err, want)
	}
	for _, target := range []error{ErrTicketDone, ErrNotFound} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(%v, %v) = false", err, target)
		}
	}
	var bad BadRecord
	rec := errorf("registry: read: %w", BadRecord{Key: "k", Kind: KindTicket, Err: errorf("%w: ticket id", ErrInvalid)})
	if !errors.As(rec, &bad) || bad.Key != "k" || !errors.Is(rec, ErrCorrupt) {
		t.Errorf("errorf hides the BadRecord it wraps: %v", rec)
	}
	prefixOnce(t, rec)
}

// TestHolderErrorsPrefixOnce drives the holder's failures on a real etcd:
// each error names the package once and still matches its sentinels.
func TestHolderErrorsPrefixOnce(t *testing.T) {
	r, _, ctx := setupWeb(t)
	s := register(t, r, "h1")
	tk, _ := claimNew(t, r, s)
	must(t, s.Complete(ctx, tk))

	err := s.Complete(ctx, tk)
	mustIs(t, err, ErrTicketDone)
	mustIs(t, err, ErrNotFound)
	prefixOnce(t, err)

	err = s.Release(ctx, tk, "test")
	mustIs(t, err, ErrTicketDone)
	prefixOnce(t, err)

	other := register(t, r, "h2")
	tk2, _ := claimNew(t, r, s)
	_, err = other.Claim(ctx, tk2)
	mustIs(t, err, ErrClaimed)
	prefixOnce(t, err)
	err = other.Release(ctx, tk2, "test")
	mustIs(t, err, ErrNotHolder)
	prefixOnce(t, err)

	_, err = r.Scale(ctx, "nosuchapp", "v1", "worker", 1)
	mustIs(t, err, ErrNotFound)
	prefixOnce(t, err)
}
