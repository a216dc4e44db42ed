package systemd

import (
	"fmt"
	"net"
	"os"
)

// Notification states understood by systemd (sd_notify(3)).
const (
	// StateReady tells the service manager that start-up is finished.
	StateReady = "READY=1"
	// StateStopping tells the service manager that shutdown has begun.
	StateStopping = "STOPPING=1"
)

// Notify sends state (one or more newline-separated VAR=VALUE assignments,
// see sd_notify(3)) to the socket named by $NOTIFY_SOCKET. It reports whether
// a notification was sent: without $NOTIFY_SOCKET (not started by systemd
// with Type=notify) it does nothing and returns false, nil. A name starting
// with '@' is a Linux abstract socket. Notify does not block beyond one
// datagram write and is safe for concurrent use.
func Notify(state string) (sent bool, err error) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return false, nil
	}
	// The net package maps a leading '@' to the abstract namespace itself.
	addr := &net.UnixAddr{Name: name, Net: "unixgram"}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return false, fmt.Errorf("systemd: notify %s: %w", name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("systemd: notify %s: %w", name, err)
	}
	return true, nil
}

// NotifyReady sends READY=1: the agent's registry session is up. It is a
// no-op when not running under systemd.
func NotifyReady() error {
	_, err := Notify(StateReady)
	return err
}

// NotifyStopping sends STOPPING=1: the agent has begun its shutdown. It is a
// no-op when not running under systemd.
func NotifyStopping() error {
	_, err := Notify(StateStopping)
	return err
}
