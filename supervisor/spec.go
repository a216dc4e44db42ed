package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/logfile"
	"github.com/visorhq/visor/supervisor/restart"
	"github.com/visorhq/visor/supervisor/shellline"
)

// Defaults of a Spec's zero values.
const (
	DefaultStopTimeout   = 10 * time.Second
	DefaultHealthPeriod  = 10 * time.Second
	DefaultHealthTimeout = 5 * time.Second
	DefaultHealthFails   = 3
	// DefaultPath is the PATH of a Spec without one in Env; Command[0] is
	// looked up in it.
	DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Spec describes one instance: what to run, as whom, how to stop it, when to
// restart it and what it may use. The zero values of optional fields are
// documented defaults.
type Spec struct {
	// ID names the instance: [a-z0-9][a-z0-9._-]*, at most 128 bytes.
	ID string `json:"id"`
	// Command is the argv; Command[0] without a slash is looked up in the
	// PATH of Env (DefaultPath when Env has none). Exactly one of Command
	// and Shell is set.
	Command []string `json:"command,omitempty"`
	// Shell is a command line, classified by package shellline: one
	// simple command of literal words runs directly (its program looked
	// up like Command[0]); one command of a program whose words need
	// expanding runs as /bin/sh -c "exec LINE", so the shell replaces
	// itself with the program; anything else runs under /bin/sh -c as
	// written (bash -c for bash syntax or builtins such as source). A
	// program the line names that is not found, or a line that does not
	// parse, is an error.
	Shell string `json:"shell,omitempty"`
	// Env is the whole environment of the process ("K=V"); nil means only
	// PATH=DefaultPath. The supervisor's own environment is not inherited.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; "" means the supervisor's.
	Dir string `json:"dir,omitempty"`
	// User and Group run the process as that user (name or numeric id) and
	// group, with the user's supplementary groups from the group database;
	// Group "" means the user's primary group. An unknown name is an
	// error, and so is a Group without a User. Empty User runs as the
	// supervisor's user. Exec health checks run with the same credentials.
	User  string `json:"user,omitempty"`
	Group string `json:"group,omitempty"`
	// StopSignal is sent to the process group by Stop: "TERM" (default),
	// "SIGTERM", "HUP", "USR1", "INT", "QUIT", "KILL", ... A signal that
	// pauses or resumes a process (STOP, TSTP, TTIN, TTOU, CONT) is an error.
	StopSignal string `json:"stop_signal,omitempty"`
	// StopTimeout is the grace period between StopSignal and SIGKILL;
	// zero means 10s, negative is an error.
	StopTimeout time.Duration `json:"stop_timeout,omitempty"`
	// Restart is the restart policy; the zero value restarts always with
	// exponential backoff.
	Restart restart.Policy `json:"restart"`
	// MinUptime is the "started" criterion: the instance is running only
	// after this uptime and, with a Health check, its first pass. Zero
	// without Health means running as soon as the process is started.
	MinUptime time.Duration `json:"min_uptime,omitempty"`
	// Health is an optional health check. Once running, FailureThreshold
	// consecutive failures restart the process with reason "health".
	Health *HealthCheck `json:"health,omitempty"`
	// Logs are the rotation options of the stdout and stderr files.
	Logs logfile.Options `json:"logs"`
	// Limits are the resource limits, enforced through a cgroup when the
	// host has a usable controller (see Supervisor.CgroupMode); otherwise
	// they are not enforced and a warning is logged.
	Limits cgroup.Limits `json:"limits"`
	// Meta is opaque to the supervisor: persisted with the state and
	// returned in every Status.
	Meta map[string]string `json:"meta,omitempty"`
}

// HealthCheck probes a running instance periodically.
type HealthCheck struct {
	// Type is CheckExec, CheckTCP or CheckHTTP.
	Type CheckType `json:"type"`
	// Command is the argv of an exec check; exit 0 passes. It runs with the
	// instance's Env and Dir.
	Command []string `json:"command,omitempty"`
	// Address is the host:port a tcp check connects to.
	Address string `json:"address,omitempty"`
	// URL is fetched by an http check; a 2xx or 3xx status passes.
	URL string `json:"url,omitempty"`
	// Period between probes; zero means 10s.
	Period time.Duration `json:"period,omitempty"`
	// Timeout of one probe; zero means 5s (at most Period).
	Timeout time.Duration `json:"timeout,omitempty"`
	// FailureThreshold is the number of consecutive failures that restart
	// a running instance; zero means 3.
	FailureThreshold int `json:"failure_threshold,omitempty"`
}

// withDefaults returns h with its zero values replaced.
func (h HealthCheck) withDefaults() HealthCheck {
	if h.Period == 0 {
		h.Period = DefaultHealthPeriod
	}
	if h.Timeout == 0 {
		h.Timeout = min(DefaultHealthTimeout, h.Period)
	}
	if h.FailureThreshold == 0 {
		h.FailureThreshold = DefaultHealthFails
	}
	return h
}

// resolved is a validated Spec ready to fork.
type resolved struct {
	path        string // absolute path of the executable
	argv        []string
	env         []string
	dir         string
	cred        *syscall.Credential
	stopSignal  syscall.Signal
	stopTimeout time.Duration
	health      *HealthCheck // with defaults
	prober      prober       // of health; nil without
}

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// validate checks spec and resolves the executable, user and signal. Every
// error wraps ErrInvalidSpec.
func validate(spec Spec) (resolved, error) {
	var r resolved
	if len(spec.ID) > 128 || !idPattern.MatchString(spec.ID) {
		return r, invalid("id %q must match [a-z0-9][a-z0-9._-]* and be at most 128 bytes", spec.ID)
	}
	if err := r.resolveCommand(spec); err != nil {
		return resolved{}, err
	}
	var err error
	if r.cred, err = credential(spec.User, spec.Group); err != nil {
		return resolved{}, err
	}
	if err := r.resolveStop(spec); err != nil {
		return resolved{}, err
	}
	if spec.MinUptime < 0 {
		return resolved{}, invalid("negative min uptime")
	}
	for _, v := range []interface{ Validate() error }{spec.Restart, spec.Logs, spec.Limits} {
		if err := v.Validate(); err != nil {
			return resolved{}, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
		}
	}
	if err := r.resolveHealth(spec.Health); err != nil {
		return resolved{}, err
	}
	return r, nil
}

// invalid is an error wrapping ErrInvalidSpec.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, args...))
}

// resolveCommand sets r's argv, env, dir and the absolute path of its
// executable from spec's Command or Shell line, Env and Dir. A program the
// shell would exec is looked up too: a missing one is a clear error now,
// not a crash loop of exit code 127.
func (r *resolved) resolveCommand(spec Spec) error {
	var line shellline.Line // of Shell
	switch {
	case len(spec.Command) > 0 && spec.Shell != "":
		return invalid("both command and shell set")
	case len(spec.Command) > 0:
		r.argv = append([]string(nil), spec.Command...)
	case strings.TrimSpace(spec.Shell) != "":
		var err error
		if line, err = shellline.Parse(spec.Shell); err != nil {
			return invalid("shell: %v", err)
		}
		r.argv = line.Args()
	default:
		return invalid("no command")
	}
	r.env = spec.Env
	if r.env == nil {
		r.env = []string{"PATH=" + DefaultPath}
	}
	r.dir = spec.Dir
	if r.dir != "" {
		fi, err := os.Stat(r.dir)
		if err != nil {
			return invalid("dir: %v", err)
		}
		if !fi.IsDir() {
			return invalid("dir %q is not a directory", r.dir)
		}
	}
	if line.Kind == shellline.Exec && line.Program != "" {
		if _, err := lookPath(line.Program, r.dir, envPath(r.env)); err != nil {
			return err
		}
	}
	path, err := lookPath(r.argv[0], r.dir, envPath(r.env))
	if err != nil {
		if line.Shell == shellline.Bash {
			return fmt.Errorf("%w (the shell line uses bash syntax or builtins)", err)
		}
		return err
	}
	r.path = path
	return nil
}

// resolveStop sets r's stop signal and grace period from spec.
func (r *resolved) resolveStop(spec Spec) error {
	r.stopSignal = syscall.SIGTERM
	if spec.StopSignal != "" {
		var err error
		if r.stopSignal, err = ParseSignal(spec.StopSignal); err != nil {
			return err
		}
		if err := checkStopSignal(r.stopSignal); err != nil {
			return err
		}
	}
	switch {
	case spec.StopTimeout < 0:
		return invalid("negative stop timeout")
	case spec.StopTimeout == 0:
		r.stopTimeout = DefaultStopTimeout
	default:
		r.stopTimeout = spec.StopTimeout
	}
	return nil
}

// resolveHealth sets r's health check (defaults applied) and its prober,
// which inherits r's env, dir and credentials; nil h is no check. It runs
// after the command and credentials are resolved.
func (r *resolved) resolveHealth(h *HealthCheck) error {
	if h == nil {
		return nil
	}
	hc := h.withDefaults()
	if hc.Period < 0 || hc.Timeout < 0 || hc.FailureThreshold < 0 {
		return invalid("health: negative period, timeout or threshold")
	}
	p, err := newProber(hc, runAs{env: r.env, dir: r.dir, cred: r.cred})
	if err != nil {
		return invalid("health: %v", err)
	}
	r.health, r.prober = &hc, p
	return nil
}

// envPath returns the PATH of env, or DefaultPath.
func envPath(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "PATH="); ok {
			return v
		}
	}
	return DefaultPath
}

// lookPath resolves name like execve would after chdir(dir), checking that
// it is a regular executable file.
func lookPath(name, dir, path string) (string, error) {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		if fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", p)
		}
		return nil
	}
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			base := dir
			if base == "" {
				base, _ = os.Getwd()
			}
			p = filepath.Join(base, p)
		}
		if err := check(p); errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: command %q not found (%s does not exist)", ErrInvalidSpec, name, p)
		} else if err != nil {
			return "", fmt.Errorf("%w: command %q: %v", ErrInvalidSpec, name, err)
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" || !filepath.IsAbs(d) {
			continue
		}
		p := filepath.Join(d, name)
		if check(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: command %q not found in PATH %s", ErrInvalidSpec, name, path)
}

// runsAsRoot reports whether the process (and its exec health check)
// would run with uid 0.
func (r resolved) runsAsRoot() bool {
	if r.cred == nil {
		return os.Geteuid() == 0
	}
	return r.cred.Uid == 0
}

// credential resolves a run-as user and group; nil when both are empty.
// The user's supplementary groups are its groups in the group database
// (as login and initgroups give them), also when Group overrides the
// primary group. A group without a user is refused: the process would
// still run as the supervisor's uid (root, usually), which is what setting
// a group was meant to avoid (issue 14, row 7).
func credential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	if userName == "" {
		return nil, fmt.Errorf("%w: group %q without user: the process would still run as uid %d; set the user too", ErrInvalidSpec, groupName, os.Getuid())
	}
	u, err := user.Lookup(userName)
	if err != nil {
		if _, nerr := strconv.Atoi(userName); nerr == nil {
			u, err = user.LookupId(userName)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: user %q: %v", ErrInvalidSpec, userName, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("%w: groups of user %q: %v", ErrInvalidSpec, userName, err)
	}
	for _, id := range ids {
		g, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: groups of user %q: bad gid %q", ErrInvalidSpec, userName, id)
		}
		cred.Groups = append(cred.Groups, uint32(g))
	}
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			if _, nerr := strconv.Atoi(groupName); nerr == nil {
				g, err = user.LookupGroupId(groupName)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: group %q: %v", ErrInvalidSpec, groupName, err)
		}
		gid, _ := strconv.ParseUint(g.Gid, 10, 32)
		cred.Gid = uint32(gid)
	}
	return cred, nil
}
