package systemd

import (
	"net"
	"path/filepath"
	"testing"
)

func BenchmarkRender(b *testing.B) {
	for _, init := range []string{InitSystemd, InitLaunchd} {
		b.Run(init, func(b *testing.B) {
			o := renderCases[1].opts
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Render(init, o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNotify measures one sd_notify datagram, as the agent sends at
// READY and STOPPING.
func BenchmarkNotify(b *testing.B) {
	sock := filepath.Join(b.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	b.Setenv("NOTIFY_SOCKET", sock)
	buf := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Notify(StateReady); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}
