package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/kardianos/service"
)

var (
	// ErrNotInstalled is returned by Uninstall, Start, Stop and Restart when
	// the service is not installed.
	ErrNotInstalled = errors.New("systemd: service not installed")
	// ErrInitNotRunning is returned when the init system the service is
	// installed for is not the one running the host (e.g. a unit written on
	// a host whose PID 1 is not systemd), so it cannot be controlled.
	ErrInitNotRunning = errors.New("systemd: init system not running")
	// ErrNoInit is returned when no init system was detected.
	ErrNoInit = errors.New("systemd: no init system detected")
)

// Runner runs an init system's control command (systemctl, launchctl) and
// returns its combined output. A non-zero exit is an error wrapping
// *exec.ExitError.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// ExecRunner is the Runner that executes the command.
func ExecRunner(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Config configures a Manager.
type Config struct {
	// Init is InitSystemd, InitLaunchd, or empty to detect the host's init
	// system with kardianos/service. A detected system other than systemd
	// or launchd is driven by kardianos/service itself (e.g. SysV scripts).
	Init string
	// Root is prepended to every path the Manager writes or removes, as if
	// the host's file system were mounted there. Empty means "/". A Root
	// other than "/" is only supported for InitSystemd and InitLaunchd.
	Root string
	// Options describe the agent the service runs (used by Install).
	Options Options
	// Run runs systemctl and launchctl. Nil means ExecRunner.
	Run Runner
	// InitRunning reports whether the init system is running this host, so
	// control commands can reach it. Nil means: never when Root is not "/"
	// (the files are for another system); otherwise systemd when
	// /run/systemd/system exists (sd_booted(3)), launchd on macOS.
	InitRunning func() bool
	// Logger receives one Info line per change. Nil means no logging.
	Logger hclog.Logger
}

// Manager installs and controls the agent's service. Its methods are safe
// to call one at a time; they do not run concurrently with each other.
type Manager struct {
	cfg  Config
	init string
	// fallback is set when a system other than systemd/launchd was detected.
	fallback service.System
}

// Result says what Install or Uninstall did.
type Result struct {
	// Init is the init system acted on ("systemd", "launchd", or the
	// kardianos/service name of a fallback system, e.g. "unix-systemv").
	Init string `json:"init"`
	// Path is the service definition written or removed, relative to "/"
	// (Root is not included). Empty for a fallback system.
	Path string `json:"path,omitempty"`
	// Changed reports whether the file on disk changed (Install: created or
	// replaced with different content; Uninstall: removed).
	Changed bool `json:"changed"`
	// Fallback reports that kardianos/service's own definition was used,
	// because the host runs neither systemd nor launchd.
	Fallback bool `json:"fallback"`
	// Reloaded reports whether the init system was told about the change
	// (systemctl daemon-reload and enable/disable). False when it is not
	// running on this host.
	Reloaded bool `json:"reloaded"`
}

// Status describes the installed service.
type Status struct {
	// Init is the init system, as in Result.
	Init string `json:"init"`
	// Path is the service definition, as in Result.
	Path string `json:"path,omitempty"`
	// Installed reports whether the service definition exists.
	Installed bool `json:"installed"`
	// State is what the init system says: for systemd the output of
	// systemctl is-active (active, inactive, failed, activating, ...), for
	// others running, stopped or unknown; "not-installed" and "init-not-running"
	// when it cannot be asked.
	State string `json:"state"`
	// Detail explains an "unknown" State.
	Detail string `json:"detail,omitempty"`
}

// New returns a Manager for cfg, detecting the init system if cfg.Init is
// empty.
func New(cfg Config) (*Manager, error) {
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.Run == nil {
		cfg.Run = ExecRunner
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.InitRunning == nil && filepath.Clean(cfg.Root) != "/" {
		// Files written under another root are for another system (an
		// image): the init system running here must not load them.
		cfg.InitRunning = func() bool { return false }
	}
	if cfg.InitRunning == nil {
		cfg.InitRunning = defaultInitRunning(cfg.Init)
	}
	m := &Manager{cfg: cfg, init: cfg.Init}
	switch cfg.Init {
	case InitSystemd, InitLaunchd:
	case "":
		sys := service.ChosenSystem()
		if sys == nil {
			return nil, ErrNoInit
		}
		switch sys.String() {
		case "linux-systemd":
			m.init = InitSystemd
		case "darwin-launchd":
			m.init = InitLaunchd
		default:
			m.init = sys.String()
			m.fallback = sys
		}
		if m.cfg.InitRunning == nil {
			m.cfg.InitRunning = defaultInitRunning(m.init)
		}
	default:
		return nil, fmt.Errorf("%w: %q (want %s or %s)", ErrUnknownInit, cfg.Init, InitSystemd, InitLaunchd)
	}
	if m.fallback != nil && filepath.Clean(cfg.Root) != "/" {
		return nil, fmt.Errorf("%w: root %q needs init %s or %s, detected %s", ErrInvalidOptions, cfg.Root, InitSystemd, InitLaunchd, m.init)
	}
	return m, nil
}

func defaultInitRunning(init string) func() bool {
	switch init {
	case InitSystemd:
		return func() bool {
			fi, err := os.Stat("/run/systemd/system")
			return err == nil && fi.IsDir()
		}
	case InitLaunchd:
		return func() bool { return runtime.GOOS == "darwin" }
	}
	return nil
}

// Init returns the init system the Manager acts on.
func (m *Manager) Init() string { return m.init }

// Fallback reports whether the Manager drives a system other than systemd
// or launchd through kardianos/service.
func (m *Manager) Fallback() bool { return m.fallback != nil }

// Path returns the service definition's path relative to "/", or "" for a
// fallback system.
func (m *Manager) Path() string {
	switch m.init {
	case InitSystemd:
		return "/etc/systemd/system/" + ServiceName + ".service"
	case InitLaunchd:
		return "/Library/LaunchDaemons/" + ServiceName + ".plist"
	}
	return ""
}

func (m *Manager) hostPath() string { return filepath.Join(m.cfg.Root, m.Path()) }

func (m *Manager) unit() string { return ServiceName + ".service" }

// Install writes the service definition rendered from Config.Options and
// tells the init system (daemon-reload and enable for systemd). It does not
// start the service. Install is idempotent: an existing definition is
// replaced atomically, and a running agent keeps running on the old one
// until restarted (Result.Changed says whether that matters). Options are
// validated before anything is written.
func (m *Manager) Install(ctx context.Context) (Result, error) {
	res := Result{Init: m.init, Path: m.Path(), Fallback: m.fallback != nil}
	if m.fallback != nil {
		return res, m.installFallback()
	}
	data, err := Render(m.init, m.cfg.Options)
	if err != nil {
		return res, err
	}
	p := m.hostPath()
	old, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("install: %w", err)
	}
	if err != nil || !bytes.Equal(old, data) {
		if err := writeFileAtomic(p, data, 0o644); err != nil {
			return res, fmt.Errorf("install: %w", err)
		}
		res.Changed = true
		m.cfg.Logger.Info("service definition written", "init", m.init, "path", p)
	}
	if m.init == InitSystemd && m.cfg.InitRunning() {
		if _, err := m.cfg.Run(ctx, "systemctl", "daemon-reload"); err != nil {
			return res, fmt.Errorf("install: %w", err)
		}
		if _, err := m.cfg.Run(ctx, "systemctl", "enable", m.unit()); err != nil {
			return res, fmt.Errorf("install: %w", err)
		}
		res.Reloaded = true
	}
	return res, nil
}

// Uninstall stops and disables the service (best effort), removes the
// service definition and tells the init system. It returns ErrNotInstalled,
// having changed nothing, when no definition exists.
func (m *Manager) Uninstall(ctx context.Context) (Result, error) {
	res := Result{Init: m.init, Path: m.Path(), Fallback: m.fallback != nil}
	if m.fallback != nil {
		return res, m.uninstallFallback()
	}
	p := m.hostPath()
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("%w: %s does not exist", ErrNotInstalled, p)
	}
	running := m.cfg.InitRunning()
	if running {
		// Best effort: a unit that was never enabled or started is fine.
		var err error
		switch m.init {
		case InitSystemd:
			_, err = m.cfg.Run(ctx, "systemctl", "disable", "--now", m.unit())
		case InitLaunchd:
			_, err = m.cfg.Run(ctx, "launchctl", "unload", p)
		}
		if err != nil {
			m.cfg.Logger.Warn("stop before uninstall failed", "init", m.init, "error", err)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("uninstall: %w", err)
	}
	res.Changed = true
	m.cfg.Logger.Info("service definition removed", "init", m.init, "path", p)
	if m.init == InitSystemd && running {
		if _, err := m.cfg.Run(ctx, "systemctl", "daemon-reload"); err != nil {
			return res, fmt.Errorf("uninstall: %w", err)
		}
		res.Reloaded = true
	}
	return res, nil
}

// Start asks the init system to start the installed service.
func (m *Manager) Start(ctx context.Context) error { return m.control(ctx, "start") }

// Stop asks the init system to stop the service. Instances keep running
// (KillMode=process) and are re-adopted by the next agent.
func (m *Manager) Stop(ctx context.Context) error { return m.control(ctx, "stop") }

// Restart asks the init system to restart the service.
func (m *Manager) Restart(ctx context.Context) error { return m.control(ctx, "restart") }

func (m *Manager) control(ctx context.Context, action string) error {
	if m.fallback != nil {
		s, err := m.kardianos()
		if err != nil {
			return err
		}
		if err := service.Control(s, action); err != nil {
			return fmt.Errorf("%s: %w", action, err)
		}
		return nil
	}
	p := m.hostPath()
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("%s: %w: %s", action, ErrNotInstalled, p)
	}
	if !m.cfg.InitRunning() {
		return fmt.Errorf("%s: %w: %s", action, ErrInitNotRunning, m.init)
	}
	var err error
	switch {
	case m.init == InitSystemd:
		_, err = m.cfg.Run(ctx, "systemctl", action, m.unit())
	case action == "start":
		_, err = m.cfg.Run(ctx, "launchctl", "load", p)
	case action == "stop":
		_, err = m.cfg.Run(ctx, "launchctl", "unload", p)
	default:
		_, err = m.cfg.Run(ctx, "launchctl", "kickstart", "-k", "system/"+ServiceName)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	m.cfg.Logger.Info("service control sent", "init", m.init, "action", action)
	return nil
}

// Status reports whether the service is installed and what the init system
// says about it.
func (m *Manager) Status(ctx context.Context) (Status, error) {
	st := Status{Init: m.init, Path: m.Path()}
	if m.fallback != nil {
		s, err := m.kardianos()
		if err != nil {
			return st, err
		}
		if m.init == "unix-systemv" {
			if _, err := os.Stat(sysvScript); err != nil {
				st.State = "not-installed"
				return st, nil
			}
		}
		ks, err := s.Status()
		switch {
		case errors.Is(err, service.ErrNotInstalled):
			st.State = "not-installed"
			return st, nil
		case err != nil:
			// kardianos reports a stopped SysV service (its script exits 1)
			// as an error: the service is installed, its state unclear.
			st.Installed = true
			st.State = "unknown"
			st.Detail = err.Error()
			return st, nil
		}
		st.Installed = true
		st.State = map[service.Status]string{service.StatusRunning: "running", service.StatusStopped: "stopped"}[ks]
		if st.State == "" {
			st.State = "unknown"
		}
		return st, nil
	}
	if _, err := os.Stat(m.hostPath()); err != nil {
		st.State = "not-installed"
		return st, nil
	}
	st.Installed = true
	if !m.cfg.InitRunning() {
		st.State = "init-not-running"
		return st, nil
	}
	switch m.init {
	case InitSystemd:
		// is-active exits non-zero for every state but active; its output
		// is the answer either way.
		out, err := m.cfg.Run(ctx, "systemctl", "is-active", m.unit())
		st.State = strings.TrimSpace(string(out))
		if st.State == "" && err != nil {
			return st, fmt.Errorf("status: %w", err)
		}
	case InitLaunchd:
		if _, err := m.cfg.Run(ctx, "launchctl", "list", ServiceName); err != nil {
			st.State = "stopped"
		} else {
			st.State = "running"
		}
	}
	return st, nil
}

// program satisfies service.Interface; the Manager only installs and
// controls, it never runs the service through kardianos.
type program struct{}

func (program) Start(service.Service) error { return nil }
func (program) Stop(service.Service) error  { return nil }

func (m *Manager) kardianos() (service.Service, error) {
	o := m.cfg.Options
	cfg := &service.Config{
		Name:        ServiceName,
		DisplayName: "Visor host agent",
		Description: "Visor host agent",
		UserName:    o.User,
		Executable:  o.Binary,
		Arguments:   o.Argv()[1:],
	}
	s, err := m.fallback.New(program{}, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.init, err)
	}
	return s, nil
}

// installFallback installs through kardianos/service, which refuses to
// overwrite: uninstall first (best effort) to stay idempotent.
func (m *Manager) installFallback() error {
	if err := m.cfg.Options.validate(); err != nil {
		return err
	}
	s, err := m.kardianos()
	if err != nil {
		return err
	}
	if err := s.Uninstall(); err != nil {
		m.cfg.Logger.Debug("uninstall before install", "init", m.init, "error", err)
	}
	if err := s.Install(); err != nil {
		return fmt.Errorf("install %s: %w", m.init, err)
	}
	m.cfg.Logger.Info("service installed", "init", m.init)
	return nil
}

func (m *Manager) uninstallFallback() error {
	s, err := m.kardianos()
	if err != nil {
		return err
	}
	if st, err := s.Status(); err == nil && st == service.StatusRunning {
		if err := s.Stop(); err != nil {
			m.cfg.Logger.Warn("stop before uninstall failed", "init", m.init, "error", err)
		}
	}
	err = s.Uninstall()
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, service.ErrNotInstalled):
		return fmt.Errorf("%w: %s", ErrNotInstalled, m.init)
	case err != nil:
		return fmt.Errorf("uninstall %s: %w", m.init, err)
	}
	if m.init == "unix-systemv" {
		// kardianos links the script into the runlevel directories on
		// install but leaves the links behind on uninstall.
		for _, l := range sysvLinks() {
			if dst, err := os.Readlink(l); err == nil && dst == sysvScript {
				if err := os.Remove(l); err != nil {
					return fmt.Errorf("uninstall %s: %w", m.init, err)
				}
			}
		}
	}
	m.cfg.Logger.Info("service uninstalled", "init", m.init)
	return nil
}

// sysvScript is where kardianos/service writes the SysV init script.
const sysvScript = "/etc/init.d/" + ServiceName

// sysvLinks are the runlevel links kardianos/service creates for sysvScript.
func sysvLinks() []string {
	var out []string
	for _, lvl := range "2345" {
		out = append(out, "/etc/rc"+string(lvl)+".d/S50"+ServiceName)
	}
	for _, lvl := range "016" {
		out = append(out, "/etc/rc"+string(lvl)+".d/K02"+ServiceName)
	}
	return out
}

// writeFileAtomic writes data to a temporary file next to path and renames
// it over path, so a reader never sees a partial unit.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
