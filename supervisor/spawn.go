package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/visorhq/visor/supervisor/logfile"
)

// spawnLocked starts a new process for the instance and moves it to
// starting (or running when it has no started criterion). Once Run is
// shutting down it forks nothing and returns ErrStopped; a spawn begun
// before holds Run's shutdown until its process is watched and recorded.
func (s *Supervisor) spawnLocked(in *instance) error {
	if !s.track() {
		return ErrStopped
	}
	defer s.wg.Done()
	in.restarting = false
	if err := s.groupLocked(in); err != nil {
		return err
	}
	pid, handle, err := s.forkLocked(in)
	if err != nil {
		return err
	}
	ticks, _, err := procStat(pid)
	if err != nil {
		in.log.Warn("read process start time", "pid", pid, "error", err)
	}
	in.gen++
	in.pid, in.handle, in.startTicks, in.adopted = pid, handle, ticks, false
	// The clock (time.Now), not ticksTime: the boot time in /proc/stat
	// has a one-second resolution, too coarse for MinUptime and
	// ResetAfter, and Now carries a monotonic reading.
	in.startTime = s.now()
	in.phase, in.continued = PhaseRunning, false
	in.upOK, in.healthy, in.fails, in.healthKill, in.health = in.spec.MinUptime == 0, false, 0, false, ""
	if err := s.reaper.add(watch{in: in, gen: in.gen, fd: handle}); err != nil {
		// Without a watch nobody would notice the exit: undo the start.
		_ = killGroup(pid, syscall.SIGKILL)
		reapBlocking(handle, pid)
		closeHandle(handle)
		in.pid, in.handle = 0, -1
		return err
	}
	// Without a started criterion running follows at once: one state record
	// write for both.
	s.moveLocked(in, StateStarting, "", !in.upOK || in.rs.health != nil)
	in.log.Debug("process started", "pid", pid, "path", in.rs.path)
	s.armStartedLocked(in)
	return nil
}

// armStartedLocked arms the started criterion (MinUptime, health check) of
// the current process and moves to running when it is already met.
func (s *Supervisor) armStartedLocked(in *instance) {
	gen := in.gen
	if in.rs.health != nil && s.runCtx != nil && s.track() {
		ctx, cancel := context.WithCancel(s.runCtx)
		in.healthCancel = cancel
		h, p := *in.rs.health, in.rs.prober
		go func() {
			defer s.wg.Done()
			s.healthLoop(ctx, in, gen, h, p)
		}()
	}
	if !in.upOK {
		wait := in.spec.MinUptime - s.now().Sub(in.startTime)
		if wait <= 0 {
			in.upOK = true
		} else {
			in.upTimer = s.afterFunc(wait, func() {
				in.mu.Lock()
				defer in.mu.Unlock()
				if in.gen != gen || in.handle < 0 {
					return
				}
				in.upTimer = nil
				in.upOK = true
				s.maybeRunningLocked(in)
			})
		}
	}
	s.maybeRunningLocked(in)
}

// maybeRunningLocked moves a starting instance to running once its started
// criterion is met.
func (s *Supervisor) maybeRunningLocked(in *instance) {
	if in.state == StateStarting && in.upOK && (in.rs.health == nil || in.healthy) {
		s.transitionLocked(in, StateRunning, "")
	}
}

// groupLocked gives the instance its cgroup, when the supervisor has
// cgroups and the instance none yet, and notes the group's OOM kills so
// far: only a kill past these is the next process's.
func (s *Supervisor) groupLocked(in *instance) error {
	if s.cg != nil && in.group == nil {
		g, err := s.cg.Create(in.id, in.spec.Limits)
		if err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
		in.group = g
	}
	in.oomBase = 0
	if in.group != nil {
		if n, err := in.group.OOMKills(); err == nil {
			in.oomBase = n
		}
	}
	return nil
}

// forkLocked forks and execs the instance's process as the leader of a
// new process group (in the instance's cgroup, if any), its stdin
// /dev/null and its stdout and stderr appended to its logs, and returns
// its pid and watch handle. A spec that cannot run here (permissions of
// the run-as user, a bad interpreter line, a binary removed since
// validation) is ErrInvalidSpec. On error nothing is left running.
func (s *Supervisor) forkLocked(in *instance) (pid, handle int, err error) {
	stdio, err := s.openStdio(in.id)
	if err != nil {
		return 0, -1, err
	}
	defer closeFiles(stdio)
	sys := &syscall.SysProcAttr{Setpgid: true, Credential: in.rs.cred}
	handleOf := prepareHandle(sys)
	var after func(int) error
	if in.group != nil {
		if after, err = in.group.Prepare(sys); err != nil {
			return 0, -1, fmt.Errorf("prepare cgroup: %w", err)
		}
	}
	attr := &syscall.ProcAttr{
		Dir:   in.rs.dir,
		Env:   in.rs.env,
		Files: []uintptr{stdio[0].Fd(), stdio[1].Fd(), stdio[2].Fd()},
		Sys:   sys,
	}
	pid, err = syscall.ForkExec(in.rs.path, in.rs.argv, attr)
	if err != nil {
		if after != nil {
			_ = after(-1) // releases what Prepare opened
		}
		switch {
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOENT),
			errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.EPERM):
			return 0, -1, fmt.Errorf("%w: start %s: %w", ErrInvalidSpec, in.rs.path, err)
		}
		return 0, -1, fmt.Errorf("start %s: %w", in.rs.path, err)
	}
	if after != nil {
		if err := after(pid); err != nil {
			in.log.Warn("join cgroup", "pid", pid, "error", err)
		}
	}
	if handle, err = handleOf(pid); err != nil {
		// Unwatchable: undo the start rather than run it blind.
		_ = killGroup(pid, syscall.SIGKILL)
		reapBlocking(-1, pid)
		return 0, -1, fmt.Errorf("watch %s: %w", in.rs.path, err)
	}
	return pid, handle, nil
}

// openStdio opens what a process of instance id gets as stdin, stdout and
// stderr: /dev/null and its two logs, opened for appending. The caller
// closes them (closeFiles) once the process is forked.
func (s *Supervisor) openStdio(id string) ([]*os.File, error) {
	files := make([]*os.File, 0, 3)
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	files = append(files, devNull)
	for _, stream := range []string{"stdout", "stderr"} {
		f, err := logfile.OpenAppend(s.LogPath(id, stream))
		if err != nil {
			closeFiles(files)
			return nil, fmt.Errorf("open %s log: %w", stream, err)
		}
		files = append(files, f)
	}
	return files, nil
}

// closeFiles closes every file of fs.
func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
