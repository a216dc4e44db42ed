package supervisor

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/shirou/gopsutil/v4/process"

	"github.com/visorhq/visor/internal/backoff"
	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/logfile"
	"github.com/visorhq/visor/supervisor/restart"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrNotFound: no instance with that id.
	ErrNotFound = errors.New("supervisor: instance not found")
	// ErrExists: Start with the id of an instance that is not terminal.
	ErrExists = errors.New("supervisor: instance exists")
	// ErrInvalidSpec: the Spec was rejected before anything was started.
	ErrInvalidSpec = errors.New("supervisor: invalid spec")
	// ErrRoot: Config.RefuseRoot is set and the Spec would run as uid 0.
	// It comes wrapped together with ErrInvalidSpec.
	ErrRoot = errors.New("supervisor: refused to run as root")
	// ErrStopped: Run has returned or is shutting down (or was never
	// started and ctx ended).
	ErrStopped = errors.New("supervisor: stopped")
	// ErrNotRunning: the instance has no live process (Signal).
	ErrNotRunning = errors.New("supervisor: instance has no process")
	// ErrActive: Remove of an instance that is not terminal.
	ErrActive = errors.New("supervisor: instance is not terminal")
)

// Status is a snapshot of one instance.
type Status struct {
	ID    string `json:"id"`
	State State  `json:"state"`
	Phase Phase  `json:"phase"`
	// PID is the live process's id; 0 when there is none.
	PID int `json:"pid,omitempty"`
	// StartTime is when the current (or last) process started.
	StartTime time.Time `json:"start_time"`
	// Since is when State was entered.
	Since time.Time `json:"since"`
	// Restarts counts restarts by reason: "fail", "oom", "health", "manual".
	Restarts map[string]int `json:"restarts,omitempty"`
	// ExitCode is the last exit code; -1 when unknown or killed by a signal.
	ExitCode int `json:"exit_code"`
	// Signal is the signal that killed the last process ("KILL"), if any.
	Signal string `json:"signal,omitempty"`
	// Reason says why State was entered ("exit code 1", "oom", "stopped").
	Reason string `json:"reason,omitempty"`
	// CPUPercent and RSSBytes are read on demand by Supervisor.Status
	// (gopsutil); zero elsewhere.
	CPUPercent float64 `json:"cpu_percent,omitempty"`
	RSSBytes   uint64  `json:"rss_bytes,omitempty"`
	// Backoff is the delay before the restart, in state backoff.
	Backoff time.Duration `json:"backoff,omitempty"`
	// Held reports a restart that Restore holds until Resume
	// (Config.HoldRestored).
	Held bool `json:"held,omitempty"`
	// Adopted reports whether the process was re-adopted by Restore.
	Adopted bool `json:"adopted,omitempty"`
	// Restarting marks the stopping and exited states of Restart's stop
	// phase: the instance starts again at once, so a consumer that mirrors
	// states elsewhere (the agent, into the registry) may skip them rather
	// than show a stop that is not one.
	Restarting bool `json:"restarting,omitempty"`
	// Meta is the Spec's Meta.
	Meta map[string]string `json:"meta,omitempty"`
}

// StateHandler receives every state change of every instance. It is
// implemented by the caller (the agent).
type StateHandler interface {
	// InstanceStateChanged is called in order per instance, from one
	// supervisor goroutine; it must not block.
	InstanceStateChanged(id string, st Status)
}

// Config configures a Supervisor. Zero values are documented defaults.
type Config struct {
	// StateDir holds one JSON file per instance; required. Created if absent.
	StateDir string
	// LogDir holds the instances' logs, LogDir/<bucket>/<id>.stdout.log and
	// <id>.stderr.log (and their rotated copies, .1, .2, ...), see LogPath;
	// default StateDir/logs.
	LogDir string
	// Logger defaults to hclog.NewNullLogger().
	Logger hclog.Logger
	// Handler, if set, receives every state change.
	Handler StateHandler
	// Cgroups is "auto" (default: probe v2, then v1, else none), "v2", "v1"
	// (error if the host does not offer it) or "none" (process groups only).
	Cgroups string
	// CgroupParent is the parent cgroup of the instances' cgroups; default "visor".
	CgroupParent string
	// CgroupRoot is where cgroups are mounted; default /sys/fs/cgroup.
	CgroupRoot string
	// HoldRestored makes Restore hold the restarts of the instances it
	// restores until Resume: one whose process ended while nobody watched
	// (or ends before Resume) waits in backoff (Status.Held), so the caller
	// can first check it is still wanted and Stop it if it was replaced
	// meanwhile. Default false: restart policies apply at once.
	HoldRestored bool
	// RefuseRoot makes Start refuse a Spec that would run as root: one
	// without User while the supervisor runs as uid 0, or whose User has
	// uid 0. The error wraps ErrInvalidSpec and ErrRoot. Restored
	// instances are adopted regardless. Default false: a library default;
	// the agent refuses root unless allowed (-allow-root-instances).
	RefuseRoot bool
}

// rootError is the error of a Spec refused by Config.RefuseRoot: it is
// both ErrInvalidSpec and ErrRoot.
type rootError string

func (e rootError) Error() string {
	return ErrInvalidSpec.Error() + ": refused to run as root: " + string(e)
}

func (e rootError) Is(target error) bool { return target == ErrInvalidSpec || target == ErrRoot }

// Supervisor runs and watches instances. Its methods are safe for concurrent
// use. Start, Stop, Restart and Restore block until Run is running (or
// their ctx ends); after Run has returned they and Signal fail with
// ErrStopped. Status, List, Wait, Remove, LogPath and CgroupMode work at any
// time.
type Supervisor struct {
	cfg     Config
	log     hclog.Logger
	cg      *cgroup.Manager // nil: no usable cgroup controller
	cgMode  string
	rot     *logfile.Rotator
	journal *journal // persisted state, for Restore
	reaper  *reaper
	notes   *notifier // nil without Handler
	seed    uint64    // of the trackers' jitter generators (backoff.Seeded)

	readyCh chan struct{} // closed when Run is running
	doneCh  chan struct{} // closed when Run starts shutting down

	runCtx context.Context // set before readyCh is closed

	mu        sync.Mutex // guards instances and ran; taken before any instance.mu
	instances map[string]*instance
	ran       bool

	lifeMu  sync.Mutex     // guards closing and wg.Add; taken after instance.mu
	closing bool           // no new goroutines, timers, spawns or adoptions
	wg      sync.WaitGroup // timers, health checks, spawns and adoptions in flight
}

// New checks c, creates its directories, probes cgroups and returns a
// Supervisor; call Run to make it work.
func New(c Config) (*Supervisor, error) {
	if c.StateDir == "" {
		return nil, errors.New("supervisor: config: state dir required")
	}
	if c.LogDir == "" {
		c.LogDir = filepath.Join(c.StateDir, "logs")
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.CgroupParent == "" {
		c.CgroupParent = "visor"
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("supervisor: state dir: %w", err)
	}
	if err := os.MkdirAll(c.LogDir, 0o750); err != nil {
		return nil, fmt.Errorf("supervisor: log dir: %w", err)
	}
	log := c.Logger.Named("supervisor")
	j, err := openJournal(c.StateDir, log)
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	s := &Supervisor{
		cfg:       c,
		log:       log,
		journal:   j,
		readyCh:   make(chan struct{}),
		doneCh:    make(chan struct{}),
		instances: make(map[string]*instance),
		seed:      uint64(time.Now().UnixNano()),
		cgMode:    "none",
	}
	switch c.Cgroups {
	case "", "auto", "v1", "v2":
		m, err := cgroup.Probe(c.CgroupRoot, c.CgroupParent, s.log)
		switch {
		case err != nil && (c.Cgroups == "v1" || c.Cgroups == "v2"):
			return nil, fmt.Errorf("supervisor: cgroups %s: %w", c.Cgroups, err)
		case err != nil:
			s.log.Warn("no usable cgroup controller, using process groups only", "error", err)
		case m.Mode() != "none":
			s.cg, s.cgMode = m, m.Mode()
		}
		if (c.Cgroups == "v1" || c.Cgroups == "v2") && s.cgMode != c.Cgroups {
			return nil, fmt.Errorf("supervisor: cgroups %s requested, host offers %s", c.Cgroups, s.cgMode)
		}
	case "none":
	default:
		return nil, fmt.Errorf("supervisor: config: unknown cgroups mode %q", c.Cgroups)
	}
	if s.cg == nil {
		s.log.Warn("resource limits not enforced: no usable cgroup controller, process groups only")
	}
	s.log.Info("cgroups", "mode", s.cgMode)
	r, err := newReaper()
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	s.reaper = r
	s.rot = logfile.NewRotator(s.log)
	if c.Handler != nil {
		s.notes = newNotifier(c.Handler)
	}
	return s, nil
}

// CgroupMode returns "v2", "v1" or "none": how limits are enforced.
func (s *Supervisor) CgroupMode() string { return s.cgMode }

// LogPath returns the file of stream "stdout" or "stderr" of instance id:
// LogDir/<bucket>/<id>.<stream>.log, the bucket being two hex digits of a
// hash of id (64 directories). Not a directory per instance: that cost a
// mkdir on every first start. Not one directory for all: concurrent starts
// then contend for its lock, and on ext4 a file created by one of 32
// goroutines in one directory cost 640-700 µs of CPU against 370-390 µs
// spread over 64 (measured on the 2-core VM of BENCHMARKS.md).
func (s *Supervisor) LogPath(id, stream string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return filepath.Join(s.cfg.LogDir, fmt.Sprintf("%02x", h.Sum32()%logBuckets), id+"."+stream+".log")
}

// logBuckets is the number of directories LogPath spreads logs over.
const logBuckets = 64

// Run reaps exits, restarts, health-checks and rotates logs until ctx ends,
// then returns after all its goroutines have exited. It does not kill any
// process: instances outlive the supervisor and are re-adopted by Restore.
// A cancelled ctx is a clean return (nil). Run may be called only once.
func (s *Supervisor) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return errors.New("supervisor: Run called twice")
	}
	s.ran = true
	s.mu.Unlock()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.runCtx = runCtx
	var bg sync.WaitGroup
	var reapErr error
	bg.Go(func() {
		reapErr = s.reaper.run(func() bool { return runCtx.Err() != nil }, s.handleExit)
		if reapErr != nil {
			cancel()
		}
	})
	bg.Go(func() {
		if err := s.rot.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("log rotator stopped", "error", err)
		}
	})
	notesDone := make(chan struct{})
	var nbg sync.WaitGroup
	if s.notes != nil {
		nbg.Go(func() { s.notes.run(notesDone) })
	}
	s.log.Info("supervisor running", "state_dir", s.cfg.StateDir, "cgroups", s.cgMode)
	close(s.readyCh)

	<-runCtx.Done()
	s.lifeMu.Lock()
	s.closing = true
	s.lifeMu.Unlock()
	close(s.doneCh)
	s.reaper.wake()
	for _, in := range s.snapshot() {
		in.mu.Lock()
		in.quiesceLocked(s)
		in.mu.Unlock()
	}
	bg.Wait()
	s.wg.Wait() // also the spawns and adoptions begun before closing
	close(notesDone)
	nbg.Wait()
	s.reaper.close()
	s.journal.close()
	s.log.Info("supervisor stopped, processes left running")
	if reapErr != nil {
		return fmt.Errorf("supervisor: %w", reapErr)
	}
	return nil
}

// awaitRun blocks until Run is running.
func (s *Supervisor) awaitRun(ctx context.Context) error {
	select {
	case <-s.doneCh:
		return ErrStopped
	default:
	}
	select {
	case <-s.readyCh:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-s.doneCh:
		return ErrStopped
	default:
		return nil
	}
}

// track adds one goroutine or timer to wg unless Run is shutting down.
func (s *Supervisor) track() bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	return true
}

// afterFunc is time.AfterFunc owned by Run; nil while shutting down.
func (s *Supervisor) afterFunc(d time.Duration, f func()) *time.Timer {
	if !s.track() {
		return nil
	}
	return time.AfterFunc(d, func() {
		defer s.wg.Done()
		f()
	})
}

// stopTimer stops *t if set and releases its wg slot when it had not fired.
func (s *Supervisor) stopTimer(t **time.Timer) {
	if *t != nil && (*t).Stop() {
		s.wg.Done()
	}
	*t = nil
}

func (s *Supervisor) lookup(id string) (*instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return in, nil
}

// snapshot returns the instances sorted by id.
func (s *Supervisor) snapshot() []*instance {
	s.mu.Lock()
	ins := make([]*instance, 0, len(s.instances))
	for _, in := range s.instances {
		ins = append(ins, in)
	}
	s.mu.Unlock()
	sort.Slice(ins, func(i, j int) bool { return ins[i].id < ins[j].id })
	return ins
}

// Start validates spec and starts its process. Validation errors (missing or
// non-executable binary, unknown user or group, missing dir, unknown signal,
// negative durations, ...) wrap ErrInvalidSpec and leave no process behind.
// An instance with the same id must not exist or be terminal (it is then
// replaced); otherwise the error wraps ErrExists. Start returns once the
// process is forked (state starting or running); it blocks until Run is
// running.
func (s *Supervisor) Start(ctx context.Context, spec Spec) (Status, error) {
	if err := s.awaitRun(ctx); err != nil {
		return Status{}, err
	}
	rs, err := validate(spec)
	if err != nil {
		return Status{}, err
	}
	if s.cfg.RefuseRoot && rs.runsAsRoot() {
		who := "no user is set and the supervisor runs as root"
		if spec.User != "" {
			who = fmt.Sprintf("user %q has uid 0", spec.User)
		}
		return Status{}, rootError(who)
	}
	in := s.newInstance(spec, rs)
	s.mu.Lock()
	old, ok := s.instances[spec.ID]
	if ok {
		old.mu.Lock()
		terminal := old.state.Terminal()
		old.mu.Unlock()
		if !terminal {
			s.mu.Unlock()
			return Status{}, fmt.Errorf("%w: %q", ErrExists, spec.ID)
		}
		in.group = old.group
	}
	// Locked before it is published: a Stop (or Restart) that finds it
	// waits for the spawn instead of seeing no state yet and dropping its
	// request.
	in.mu.Lock()
	s.instances[spec.ID] = in
	s.mu.Unlock()
	if s.cg == nil && !spec.Limits.IsZero() {
		in.log.Warn("limits not enforced: no usable cgroup controller")
	}
	s.addLogs(in)
	err = s.spawnLocked(in)
	st := in.statusLocked()
	in.mu.Unlock()
	if err != nil {
		s.mu.Lock()
		if s.instances[spec.ID] == in {
			delete(s.instances, spec.ID)
		}
		s.mu.Unlock()
		// Wake a Stop or Wait that found it meanwhile: it is gone.
		in.mu.Lock()
		close(in.changed)
		in.changed = make(chan struct{})
		in.mu.Unlock()
		s.forget(in)
		return Status{}, err
	}
	return st, nil
}

func (s *Supervisor) addLogs(in *instance) {
	s.rot.Add(s.LogPath(in.id, "stdout"), in.spec.Logs)
	s.rot.Add(s.LogPath(in.id, "stderr"), in.spec.Logs)
}

// forget drops the state record, cgroup and log rotation of a removed instance.
func (s *Supervisor) forget(in *instance) {
	if err := s.removeState(in.id); err != nil {
		s.log.Warn("remove state record", "instance", in.id, "error", err)
	}
	if in.group != nil {
		if err := in.group.Remove(); err != nil {
			s.log.Warn("remove cgroup", "instance", in.id, "error", err)
		}
	}
	s.rot.Remove(s.LogPath(in.id, "stdout"))
	s.rot.Remove(s.LogPath(in.id, "stderr"))
}

// Stop sends the stop signal to the instance's process group, waits
// StopTimeout, then SIGKILLs the group (and its cgroup); the instance is not
// restarted. It returns the final status once the instance is exited, or
// the current status and ctx's error when ctx ends first (the stop goes on).
// Stopping a terminal instance returns its status.
func (s *Supervisor) Stop(ctx context.Context, id string) (Status, error) {
	return s.stop(ctx, id, false)
}

// stop is Stop; forRestart marks the stop phase of Restart (the statuses
// it produces have Restarting set).
func (s *Supervisor) stop(ctx context.Context, id string, forRestart bool) (Status, error) {
	if err := s.awaitRun(ctx); err != nil {
		return Status{}, err
	}
	in, err := s.lookup(id)
	if err != nil {
		return Status{}, err
	}
	in.mu.Lock()
	if !in.state.Terminal() {
		in.restarting = forRestart
	}
	switch in.state {
	case StateBackoff:
		s.stopTimer(&in.backoffTimer)
		s.transitionLocked(in, StateExited, "stopped")
	case StateStarting, StateRunning:
		s.transitionLocked(in, StateStopping, "stop requested")
		s.killLocked(in)
	}
	in.mu.Unlock()
	return s.Wait(ctx, id)
}

// Notified returns once the Handler has been given every state change
// made before the call (changes reach it from a goroutine of their own,
// so a Stop or Restart may return before its last change is delivered),
// or with ctx's error. Without a Handler it returns at once.
func (s *Supervisor) Notified(ctx context.Context) error {
	if s.notes == nil {
		return nil
	}
	return s.notes.wait(ctx)
}

// Resume ends the hold Restore put on an instance (Config.HoldRestored):
// a restart waiting in backoff goes ahead with the delay its restart policy
// chose, and later exits restart as usual. It is a no-op for an instance
// that is not held.
func (s *Supervisor) Resume(id string) error {
	in, err := s.lookup(id)
	if err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.held {
		return nil
	}
	in.held = false
	if in.state == StateBackoff {
		in.log.Info("held restart resumed", "delay", in.backoff)
		s.scheduleRestartLocked(in, in.backoff)
	}
	return nil
}

// Restart stops the instance (as Stop) and starts it again with the same
// spec, counting a "manual" restart and resetting its backoff.
func (s *Supervisor) Restart(ctx context.Context, id string) (Status, error) {
	if _, err := s.stop(ctx, id, true); err != nil {
		// ctx ended before the process did: no start follows, so the stop
		// is a stop after all.
		if in, lerr := s.lookup(id); lerr == nil {
			in.mu.Lock()
			s.abandonRestartLocked(in, "")
			in.mu.Unlock()
		}
		return Status{}, err
	}
	// Lock the instance while holding s.mu, so that a concurrent Start
	// cannot replace it between the lookup and the spawn.
	s.mu.Lock()
	in, ok := s.instances[id]
	if !ok {
		s.mu.Unlock()
		return Status{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	in.mu.Lock()
	s.mu.Unlock()
	defer in.mu.Unlock()
	if !in.state.Terminal() {
		// Someone started it again meanwhile.
		return in.statusLocked(), nil
	}
	in.restarts[restart.ReasonManual]++
	in.tracker.Reset()
	if err := s.spawnLocked(in); err != nil {
		in.restarts[restart.ReasonManual]--
		s.abandonRestartLocked(in, "restart failed: "+err.Error())
		return in.statusLocked(), err
	}
	return in.statusLocked(), nil
}

// abandonRestartLocked ends Restart's stop phase without a start: the
// handler, which may have skipped the phase's states as part of a restart,
// is told the current state again, unmarked. A non-empty reason replaces
// the state's reason.
func (s *Supervisor) abandonRestartLocked(in *instance, reason string) {
	if !in.restarting {
		return
	}
	in.restarting = false
	if reason != "" {
		in.reason = reason
	}
	if s.notes != nil {
		s.notes.push(in.statusLocked())
	}
}

// Signal sends the named signal ("HUP", "SIGUSR1", ...) to the instance's
// process group. An unknown name wraps ErrInvalidSpec; an instance without a
// live process gives ErrNotRunning.
func (s *Supervisor) Signal(id, sig string) error {
	signal, err := ParseSignal(sig)
	if err != nil {
		return err
	}
	select {
	case <-s.doneCh:
		return ErrStopped
	default:
	}
	in, err := s.lookup(id)
	if err != nil {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.handle < 0 {
		return fmt.Errorf("%w: %q", ErrNotRunning, id)
	}
	if err := in.killGroupLocked(signal); err != nil {
		return fmt.Errorf("signal %s to %q: %w", signalName(signal), id, err)
	}
	switch signal {
	case syscall.SIGCONT:
		in.continued = true
	case syscall.SIGSTOP, syscall.SIGTSTP:
		in.continued = false
	}
	in.log.Info("signal sent", "signal", signalName(signal), "pid", in.pid)
	return nil
}

// Has reports whether the supervisor knows instance id, in any state. It
// is cheap: unlike Status it reads nothing of the process.
func (s *Supervisor) Has(id string) bool {
	_, err := s.lookup(id)
	return err == nil
}

// Status returns the instance's status, with CPU and RSS read on demand.
func (s *Supervisor) Status(id string) (Status, bool) {
	in, err := s.lookup(id)
	if err != nil {
		return Status{}, false
	}
	in.mu.Lock()
	st := in.statusLocked()
	continued := in.continued
	in.mu.Unlock()
	if st.PID > 0 {
		if _, state, err := procStat(st.PID); err == nil {
			switch {
			case state == 'T' || state == 't':
				st.Phase = PhaseStopped
			case continued:
				st.Phase = PhaseContinued
			}
		}
		if p, err := process.NewProcess(int32(st.PID)); err == nil {
			if cpu, err := p.CPUPercent(); err == nil {
				st.CPUPercent = cpu
			}
			if mem, err := p.MemoryInfo(); err == nil {
				st.RSSBytes = mem.RSS
			}
		}
	}
	return st, true
}

// List returns the status of every instance, sorted by id, without CPU and
// RSS (call Status for those).
func (s *Supervisor) List() []Status {
	ins := s.snapshot()
	out := make([]Status, 0, len(ins))
	for _, in := range ins {
		in.mu.Lock()
		out = append(out, in.statusLocked())
		in.mu.Unlock()
	}
	return out
}

// Wait blocks until the instance is terminal (exited or failed) and returns
// its status; it returns at once if it already is. When ctx ends first it
// returns the current status and ctx's error; when Run returns first,
// ErrStopped.
func (s *Supervisor) Wait(ctx context.Context, id string) (Status, error) {
	for {
		in, err := s.lookup(id)
		if err != nil {
			return Status{}, err
		}
		in.mu.Lock()
		st, ch := in.statusLocked(), in.changed
		in.mu.Unlock()
		if st.State.Terminal() {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, ctx.Err()
		case <-s.doneCh:
			return st, ErrStopped
		}
	}
}

// Remove forgets a terminal instance: its state record and cgroup are deleted,
// its logs stay. A live instance gives ErrActive.
func (s *Supervisor) Remove(id string) error {
	s.mu.Lock()
	in, ok := s.instances[id]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	in.mu.Lock()
	terminal := in.state.Terminal()
	in.mu.Unlock()
	if !terminal {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrActive, id)
	}
	delete(s.instances, id)
	s.mu.Unlock()
	s.forget(in)
	return nil
}

// newInstance builds an instance without a process.
func (s *Supervisor) newInstance(spec Spec, rs resolved) *instance {
	s.mu.Lock()
	s.seed++ // Seeded starts nearby seeds far apart
	seed := s.seed
	s.mu.Unlock()
	return &instance{
		id:       spec.ID,
		spec:     spec,
		rs:       rs,
		log:      s.log.With("instance", spec.ID),
		handle:   -1,
		exitCode: -1,
		phase:    PhaseUnknown,
		restarts: make(map[string]int),
		tracker:  restart.NewTracker(spec.Restart, backoff.Seeded(seed)),
		changed:  make(chan struct{}),
	}
}
