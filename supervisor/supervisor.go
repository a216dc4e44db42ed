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
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/logfile"
)

// Config configures a Supervisor. Zero values are documented defaults.
type Config struct {
	// StateDir holds the state journal, state.jsonl: one JSON line per
	// state change of an instance (its whole record, or a tombstone after
	// Remove), compacted now and then; Restore re-adopts instances from
	// it. Required; created if absent.
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

	// now reads the clock of the spawned processes' uptimes (start time,
	// MinUptime, the restart policy's ResetAfter); nil means time.Now.
	// Tests set it to decide which runs count as stable whatever the
	// machine's speed.
	now func() time.Time
}

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
	notes   *notifier        // nil without Handler
	seed    uint64           // of the trackers' jitter generators (backoff.Seeded)
	now     func() time.Time // Config.now, or time.Now

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
		now:       c.now,
		cgMode:    "none",
	}
	if s.now == nil {
		s.now = time.Now
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
