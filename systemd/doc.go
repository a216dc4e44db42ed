// Package systemd installs and controls the Visor agent as a system service
// and speaks the service manager's readiness protocol.
//
// It holds the systemd unit and launchd plist templates (rendered with our
// own text/template constants, because github.com/kardianos/service has no
// render-only API and falls back to SysV scripts on hosts whose PID 1 is not
// systemd), the install/uninstall/start/stop/restart/status glue (a Manager
// that writes our rendered unit on systemd hosts, our plist on launchd hosts,
// and uses kardianos/service for detection and for every other init system),
// and sd_notify (Notify, NotifyReady, NotifyStopping).
//
// The packaged unit, visor-agent.service in this directory, is the unit
// rendered with PackageOptions; a test keeps the two identical.
//
// Forbidden imports: this package never imports agent, registry or
// supervisor (nor go.etcd.io/...). The agent reaches it only through the
// callbacks cmd/visor wires (NotifyReady, NotifyStopping).
package systemd
