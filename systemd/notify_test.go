package systemd

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// listenNotify opens a unixgram socket like systemd's notify socket and
// points $NOTIFY_SOCKET at it.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen %s: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return conn
}

func readDatagram(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(testtime.Scaled(5 * time.Second))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	// t.Setenv forbids t.Parallel: these cases run one after the other.
	cases := []struct {
		name   string
		socket func(t *testing.T) string
	}{
		{"path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "notify.sock") }},
		{"abstract", func(t *testing.T) string {
			return fmt.Sprintf("@visor-notify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := listenNotify(t, tc.socket(t))
			if err := NotifyReady(); err != nil {
				t.Fatalf("NotifyReady: %v", err)
			}
			if got := readDatagram(t, conn); got != StateReady {
				t.Errorf("got %q, want %q", got, StateReady)
			}
			if err := NotifyStopping(); err != nil {
				t.Fatalf("NotifyStopping: %v", err)
			}
			if got := readDatagram(t, conn); got != StateStopping {
				t.Errorf("got %q, want %q", got, StateStopping)
			}
			sent, err := Notify("STATUS=registry session up\nREADY=1")
			if err != nil || !sent {
				t.Fatalf("Notify = %v, %v; want true, nil", sent, err)
			}
			if got, want := readDatagram(t, conn), "STATUS=registry session up\nREADY=1"; got != want {
				t.Errorf("got %q, want %q", got, want)
			}
		})
	}
}

func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	sent, err := Notify(StateReady)
	if sent || err != nil {
		t.Fatalf("Notify without NOTIFY_SOCKET = %v, %v; want false, nil", sent, err)
	}
	if err := NotifyReady(); err != nil {
		t.Fatalf("NotifyReady without NOTIFY_SOCKET: %v", err)
	}
}

func TestNotifyNoListener(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody.sock"))
	sent, err := Notify(StateReady)
	if sent || err == nil {
		t.Fatalf("Notify to a missing socket = %v, %v; want false and an error", sent, err)
	}
}
