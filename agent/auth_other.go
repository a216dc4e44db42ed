//go:build !linux

package agent

import (
	"context"
	"net"
	"os"
)

// unixConnContext, where SO_PEERCRED is not available, takes every socket
// peer for the agent's own user: the socket's mode 0660 and its group are
// then the only gate (see SECURITY.md).
func unixConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerCredKey{}, peerCred{pid: -1, uid: os.Geteuid(), gid: os.Getegid()})
}
