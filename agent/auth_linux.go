package agent

import (
	"context"
	"net"

	"golang.org/x/sys/unix"
)

// unixConnContext records the peer credentials (SO_PEERCRED) of a unix
// socket connection in its context, for authUnix. A connection whose
// credentials cannot be read is refused by authUnix.
func unixConnContext(ctx context.Context, c net.Conn) context.Context {
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
	if err := raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerCredKey{}, peerCred{pid: int(cred.Pid), uid: int(cred.Uid), gid: int(cred.Gid)})
}
