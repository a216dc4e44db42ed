package registry

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestUnavailable: etcd's "not now" answers, also wrapped the way the
// registry wraps them, are Unavailable; answers about the request (not
// found, invalid, permission, conflict) and a caller's own cancellation
// are not (a test/fault run found a start released as a failure of its
// host after "etcdserver: leader changed", which then had no host left).
func TestUnavailable(t *testing.T) {
	wrap := func(err error) error { return errorf("registry: read big/v1/web: %w", err) }
	yes := []error{
		rpctypes.ErrLeaderChanged,
		wrap(rpctypes.ErrLeaderChanged),
		wrap(rpctypes.ErrNoLeader),
		wrap(rpctypes.ErrTimeout),
		wrap(rpctypes.ErrTimeoutDueToLeaderFail),
		wrap(rpctypes.ErrGRPCTimeoutDueToConnectionLost),
		wrap(status.Error(codes.Unavailable, "connection refused")),
		fmt.Errorf("start: %w", wrap(rpctypes.ErrLeaderChanged)),
	}
	no := []error{
		nil,
		fmt.Errorf("%w: revision %q", ErrNotFound, "v1"),
		fmt.Errorf("%w: bad name", ErrInvalid),
		ErrConflict,
		wrap(rpctypes.ErrPermissionDenied),
		wrap(rpctypes.ErrCompacted),
		wrap(context.Canceled),
		errors.New("leader changed"), // text alone is not etcd's error
	}
	for _, err := range yes {
		if !Unavailable(err) {
			t.Errorf("Unavailable(%v) = false, want true", err)
		}
	}
	for _, err := range no {
		if Unavailable(err) {
			t.Errorf("Unavailable(%v) = true, want false", err)
		}
	}
}
