package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
	"github.com/visorhq/visor/supervisor/cgroup"
	"github.com/visorhq/visor/supervisor/restart"
)

// ticketCompleter completes a ticket (*registry.HostSession).
type ticketCompleter interface {
	Complete(ctx context.Context, t registry.Ticket) error
}

// launchReader reads what a start needs of the registry
// (*registry.Registry).
type launchReader interface {
	Launch(ctx context.Context, app, rev, proc string) (registry.Launch, error)
}

// startSupervisor is what a start needs of the supervisor
// (*supervisor.Supervisor).
type startSupervisor interface {
	Start(ctx context.Context, spec supervisor.Spec) (supervisor.Status, error)
}

// startWriter is what a start tells the state writer (*stateWriter): the
// ticket to complete with the instance's first running state, or that
// none comes.
type startWriter interface {
	expect(id string, t registry.Ticket)
	unexpect(id string)
}

// starter runs start tickets (the executor's ticketStarter): it reads the
// launch, fetches the artifact, takes a port and hands the process to the
// supervisor, with the few parts that needs.
type starter struct {
	host      string // Config.HostID
	reg       launchReader
	bad       *badRecords // reports launch records skipped
	artifacts *artifactCache
	ports     *portAllocator
	adm       *admission // the reservation written into the instance's meta
	writer    startWriter
	sup       startSupervisor
}

// starter returns the agent's starter.
func (a *Agent) starter() *starter {
	return &starter{host: a.cfg.HostID, reg: a.reg, bad: a.metrics.badRecords, artifacts: a.artifacts,
		ports: a.ports, adm: a.adm, writer: a.writer, sup: a.sup}
}

// prepare reads the launch of start job j (the revision, proc type and
// env) and reports whether the start must first wait off the executors
// for an artifact that is not in the cache yet.
func (sr *starter) prepare(ctx context.Context, j *job) bool {
	l, err := sr.reg.Launch(ctx, j.t.App, j.t.Rev, j.t.Proc)
	// Env vars that do not check out (a key with "=" would set another
	// variable) are left out and reported, not passed to the process.
	bad, err := registry.Skipped(err)
	if err != nil {
		j.launchErr = err
		return false
	}
	sr.bad.observe("launch/"+j.t.App, bad)
	j.launch = &l
	rev := l.Revision
	if rev.ArtifactURL == "" {
		return false
	}
	if j.gid, err = releaseGroup(l.ProcType.User, l.ProcType.Group); err != nil {
		j.launchErr = err
		return false
	}
	return !sr.artifacts.ready(rev.SHA256, j.gid)
}

// start runs a start ticket: resolve the revision and proc type, fetch the
// artifact, pick a port and start the process. The ticket completes when
// the instance first reaches running (or a terminal state), written by the
// state writer in the same transaction as that state.
func (sr *starter) start(ctx context.Context, s ticketCompleter, j *job) error {
	t, inst := j.t, j.inst
	if inst.ID == "" {
		inst.ID = t.Instance
	}
	if j.launch == nil && j.launchErr == nil {
		sr.prepare(ctx, j)
	}
	if j.launchErr != nil {
		return j.launchErr
	}
	spec, port, release, err := sr.buildSpec(ctx, t, inst, *j.launch, j.gid)
	if err != nil {
		return err
	}
	// Once the supervisor has the instance, its release counts as in use
	// by it (metaDir); until then the pin keeps pruning away.
	defer release()
	sr.writer.expect(inst.ID, t)
	if _, err := sr.sup.Start(ctx, spec); err != nil {
		sr.writer.unexpect(inst.ID)
		sr.ports.Free(port, inst.ID)
		if errors.Is(err, supervisor.ErrExists) {
			// Already running here (a re-delivered ticket): done.
			return s.Complete(ctx, t)
		}
		if errors.Is(err, supervisor.ErrRoot) {
			return fmt.Errorf("start: %w (this host refuses instances running as root: give the proc type a user, `visor proc set --user`, or start the agent with -allow-root-instances)", err)
		}
		return fmt.Errorf("start: %w", err)
	}
	return nil
}

// buildSpec turns a start ticket into a supervisor.Spec.
func (sr *starter) buildSpec(ctx context.Context, t registry.Ticket, inst registry.Instance, l registry.Launch, gid int) (supervisor.Spec, int, func(), error) {
	rev, proc, appEnv := l.Revision, l.ProcType, l.Env
	dir := rev.Dir
	release := func() {}
	if rev.ArtifactURL != "" {
		var err error
		dir, release, err = sr.artifacts.Dir(ctx, rev.ArtifactURL, rev.SHA256, gid)
		if err != nil {
			return supervisor.Spec{}, 0, nil, err
		}
	} else if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return supervisor.Spec{}, 0, nil, fmt.Errorf("%w: revision directory %q is not on this host", ErrArtifact, dir)
	}
	spec, port, err := sr.specIn(t, inst, proc, appEnv, dir)
	if err != nil {
		release()
		return supervisor.Spec{}, 0, nil, err
	}
	return spec, port, release, nil
}

// specIn builds the Spec of a start ticket whose working directory is dir.
func (sr *starter) specIn(t registry.Ticket, inst registry.Instance, proc registry.ProcType, appEnv map[string]string, dir string) (supervisor.Spec, int, error) {
	var err error
	command := proc.Command
	if command == "" {
		if command, err = procfileCommand(dir, t.Proc); err != nil {
			return supervisor.Spec{}, 0, err
		}
	}
	port, err := sr.ports.Allocate(inst.ID)
	if err != nil {
		return supervisor.Spec{}, 0, err
	}

	envList := instanceEnv(t, inst.ID, sr.host, port, proc.Env, appEnv, dir)

	// The supervisor parses the line (package supervisor/shellline): a
	// simple command runs directly, a missing program is refused with its
	// name, anything else runs under /bin/sh -c.
	spec := supervisor.Spec{
		ID:          inst.ID,
		Shell:       command,
		Env:         envList,
		Dir:         dir,
		User:        proc.User,
		Group:       proc.Group,
		StopSignal:  proc.StopSignal,
		StopTimeout: time.Duration(proc.StopTimeout),
		MinUptime:   time.Duration(proc.MinUptime),
		Restart: restart.Policy{
			Mode:         proc.Restart.Policy,
			InitialDelay: time.Duration(proc.Restart.InitialDelay),
			MaxDelay:     time.Duration(proc.Restart.MaxDelay),
			ResetAfter:   time.Duration(proc.Restart.ResetAfter),
			MaxRestarts:  proc.Restart.MaxRestarts,
		},
		Limits: cgroup.Limits{
			MemoryBytes: proc.Limits.MemoryBytes,
			CPUMillis:   proc.Limits.CPUMillis,
			Pids:        proc.Limits.Pids,
		},
		Meta: map[string]string{
			metaApp:     t.App,
			metaRev:     t.Rev,
			metaProc:    t.Proc,
			metaPort:    strconv.Itoa(port),
			metaTicket:  t.ID,
			metaCreated: t.Created.Format(time.RFC3339Nano),
			metaDir:     dir,
		},
	}
	sr.adm.reservationOf(t).meta(spec.Meta)
	spec.Health = healthCheck(proc.Health, port)
	return spec, port, nil
}

// instanceEnv is the environment of instance id of ticket t on host:
// the app's env, the proc type's over it, then PORT and the VISOR_*
// identity; PATH and HOME (the release dir) unless set. Sorted by name.
func instanceEnv(t registry.Ticket, id, host string, port int, procEnv, appEnv map[string]string, dir string) []string {
	env := make(map[string]string, len(appEnv)+len(procEnv)+8)
	for k, v := range appEnv {
		env[k] = v
	}
	for k, v := range procEnv {
		env[k] = v
	}
	env["PORT"] = strconv.Itoa(port)
	env["VISOR_APP"] = t.App
	env["VISOR_REV"] = t.Rev
	env["VISOR_PROC"] = t.Proc
	env["VISOR_INSTANCE"] = id
	env["VISOR_HOST"] = host
	if _, ok := env["PATH"]; !ok {
		env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
	}
	if _, ok := env["HOME"]; !ok {
		env["HOME"] = dir
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	envList := make([]string, 0, len(keys))
	for _, k := range keys {
		envList = append(envList, k+"="+env[k])
	}
	return envList
}

// healthCheck is the supervisor's check for a proc type's health check h
// (nil: none) of an instance listening on port.
func healthCheck(h *registry.HealthCheck, port int) *supervisor.HealthCheck {
	if h == nil {
		return nil
	}
	hc := &supervisor.HealthCheck{
		Type:             supervisor.CheckType(h.Type), // same names: TestCheckTypesMatch
		Command:          h.Command,
		Period:           time.Duration(h.Period),
		Timeout:          time.Duration(h.Timeout),
		FailureThreshold: h.FailureThreshold,
	}
	switch hc.Type {
	case supervisor.CheckTCP:
		hc.Address = "127.0.0.1:" + strconv.Itoa(port)
	case supervisor.CheckHTTP:
		hc.URL = "http://127.0.0.1:" + strconv.Itoa(port) + h.Path
	}
	return hc
}
