package agent

import (
	"context"
	"net"
	"strconv"

	"golang.org/x/sys/unix"
)

// withPeer puts the unix socket peer's uid ("uid:N") into ctx, as the
// client's name for per-client limits (see clientKey).
func withPeer(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitConn); ok {
		c = lc.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKeyCtx{}, "uid:"+strconv.FormatUint(uint64(cred.Uid), 10))
}
