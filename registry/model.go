package registry

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// App is an application: the unit that owns env vars, revisions, process
// types and scale.
type App struct {
	Name    string    `json:"name"`
	RepoURL string    `json:"repo_url,omitempty"`
	Stack   string    `json:"stack,omitempty"`
	Created time.Time `json:"created"`
	// ModRevision is the etcd revision of the last write; not stored.
	ModRevision int64 `json:"-"`
}

// Revision is a deployable build of an app: either a tar.gz artifact
// (ArtifactURL with scheme file, http or https, plus its SHA256) or a
// directory already present on every host (Dir). Exactly one is set.
type Revision struct {
	App         string    `json:"app"`
	Name        string    `json:"name"`
	ArtifactURL string    `json:"artifact_url,omitempty"`
	SHA256      string    `json:"sha256,omitempty"`
	Dir         string    `json:"dir,omitempty"`
	Created     time.Time `json:"created"`
	// Release is what the revision runs with, snapshotted when it was
	// first scaled; nil while it is a draft (see Release).
	Release     *Release `json:"release,omitempty"`
	ModRevision int64    `json:"-"`
}

// Released reports whether the revision has its own process types and
// env (a Release), so that changes of the app's no longer reach it.
func (rv Revision) Released() bool { return rv.Release != nil }

// Release is a released revision's own configuration: every process type
// of the app and the app's env vars as they were, at one etcd revision,
// when the revision was first scaled. It never changes afterwards: the
// instances of the revision start from it, whatever the app's process
// types and env say later (doc.go, "Releases").
type Release struct {
	Released time.Time `json:"released"`
	// Procs are the process types by name; their ModRevision is 0.
	Procs map[string]ProcType `json:"procs"`
	Env   map[string]string   `json:"env,omitempty"`
}

// Duration is a time.Duration that encodes in JSON as a Go duration string
// ("1.5s"). It decodes from such a string or from a number of nanoseconds.
type Duration time.Duration

// String returns the duration in time.Duration notation.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON encodes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON decodes a duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration %s: want a string like \"1.5s\"", b)
	}
	*d = Duration(n)
	return nil
}

// RestartPolicy says when and how fast a crashed instance restarts.
type RestartPolicy struct {
	// Policy is "always", "on-failure" or "never"; "" means "always".
	Policy       string   `json:"policy,omitempty"`
	InitialDelay Duration `json:"initial_delay,omitempty"`
	MaxDelay     Duration `json:"max_delay,omitempty"`
	ResetAfter   Duration `json:"reset_after,omitempty"`
	// MaxRestarts bounds restarts before the instance fails; 0 = unlimited.
	MaxRestarts int `json:"max_restarts,omitempty"`
}

// HealthCheck probes a running instance.
type HealthCheck struct {
	// Type is CheckExec, CheckTCP or CheckHTTP.
	Type CheckType `json:"type"`
	// Command is the argv of an exec check.
	Command []string `json:"command,omitempty"`
	// Path is the URL path of an http check.
	Path             string   `json:"path,omitempty"`
	Period           Duration `json:"period,omitempty"`
	Timeout          Duration `json:"timeout,omitempty"`
	FailureThreshold int      `json:"failure_threshold,omitempty"`
}

// CheckType is the kind of a HealthCheck. It is the supervisor's
// CheckType, stored: the agent converts one into the other, and its tests
// keep the two sets equal (the registry does not import the supervisor).
type CheckType string

// The kinds of health check.
const (
	// CheckExec runs Command in the instance's environment; exit 0 passes.
	CheckExec CheckType = "exec"
	// CheckTCP connects to the instance's port.
	CheckTCP CheckType = "tcp"
	// CheckHTTP gets Path on the instance's port; a 2xx or 3xx status passes.
	CheckHTTP CheckType = "http"
)

// CheckTypes returns every valid CheckType.
func CheckTypes() []CheckType { return []CheckType{CheckExec, CheckTCP, CheckHTTP} }

// Valid reports whether t is one of CheckTypes.
func (t CheckType) Valid() bool {
	switch t {
	case CheckExec, CheckTCP, CheckHTTP:
		return true
	}
	return false
}

// Limits are resource limits of one instance; zero fields are unlimited.
// MemoryBytes and CPUMillis are also what the instance reserves on its
// host for admission: a host takes a start only while the reservations of
// its instances fit what it has (an instance that declares no memory
// reserves the host's default, see the agent's -instance-memory).
type Limits struct {
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// CPUMillis is CPU time in thousandths of a core (1000 = one core).
	CPUMillis int `json:"cpu_millis,omitempty"`
	Pids      int `json:"pids,omitempty"`
}

// ProcType is a process type of an app ("web", "worker").
type ProcType struct {
	App  string `json:"app"`
	Name string `json:"name"`
	// Command is a shell line; "" means the line from the artifact's Procfile.
	Command string            `json:"command,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Restart RestartPolicy     `json:"restart"`
	// StopSignal is a signal name without "SIG" ("TERM", the default when "").
	StopSignal  string       `json:"stop_signal,omitempty"`
	StopTimeout Duration     `json:"stop_timeout,omitempty"`
	MinUptime   Duration     `json:"min_uptime,omitempty"`
	Health      *HealthCheck `json:"health,omitempty"`
	Limits      Limits       `json:"limits"`
	User        string       `json:"user,omitempty"`
	Group       string       `json:"group,omitempty"`
	// Update is how a deployment moves the process type's instances to a
	// new revision; nil: the defaults (see Strategy).
	Update      *Strategy `json:"update,omitempty"`
	ModRevision int64     `json:"-"`
}

// ScaleResult reports what Scale did.
type ScaleResult struct {
	// Desired is the count written.
	Desired int
	// Live and Pending are the counted instances before the change: Live
	// have a claimed start ticket or are past it, Pending wait for a host.
	Live, Pending int
	// Started are the start tickets created, Stopped the stop tickets
	// created, Cancelled the pending start tickets deleted.
	Started, Stopped, Cancelled []string
	// Waiting counts the instances left without a start ticket because
	// the fleet has no room for them now; Reason says why (see
	// ScaleStatus).
	Waiting int
	Reason  string
	// Deployment is the id of the active deployment the count went to
	// (see Scale), "" when the scale was written.
	Deployment string
	// Released reports that this call released the revision (its first
	// Scale): its process types and env are now its own.
	Released bool
}

// ScaleEntry is one desired count.
type ScaleEntry struct {
	App     string `json:"app"`
	Rev     string `json:"rev"`
	Proc    string `json:"proc"`
	Desired int    `json:"desired"`
}

// InstanceState is the lifecycle state of an instance.
type InstanceState string

// Instance states. See ValidTransition for the allowed moves.
const (
	InstancePending  InstanceState = "pending"
	InstanceClaimed  InstanceState = "claimed"
	InstanceStarting InstanceState = "starting"
	InstanceRunning  InstanceState = "running"
	InstanceBackoff  InstanceState = "backoff"
	InstanceStopping InstanceState = "stopping"
	InstanceExited   InstanceState = "exited"
	InstanceFailed   InstanceState = "failed"
	InstanceLost     InstanceState = "lost"
)

// String returns the state name.
func (s InstanceState) String() string { return string(s) }

// Terminal reports whether s is final (exited, failed or lost).
func (s InstanceState) Terminal() bool {
	return s == InstanceExited || s == InstanceFailed || s == InstanceLost
}

// Live reports whether s counts toward the desired scale: not terminal and
// not stopping.
func (s InstanceState) Live() bool { return s.known() && !s.Terminal() && s != InstanceStopping }

func (s InstanceState) known() bool {
	switch s {
	case InstancePending, InstanceClaimed, InstanceStarting, InstanceRunning, InstanceBackoff,
		InstanceStopping, InstanceExited, InstanceFailed, InstanceLost:
		return true
	}
	return false
}

// transitions lists the moves between different states. Two of them are
// not the holder's own: claimed to pending is the release of a start
// ticket whose process never ran (Release, Unclaim: the claim is deleted
// and the host cleared in the same transaction, guarded by the claim on
// the releasing session's lease, so it happens once), and starting to
// claimed is another host's claim over the start of a holder that died
// meanwhile (claimOver, guarded by the old holder's index entry being
// gone). UpdateInstance lets the holder make neither.
var transitions = map[InstanceState][]InstanceState{
	InstancePending:  {InstanceClaimed, InstanceFailed},
	InstanceClaimed:  {InstancePending, InstanceStarting, InstanceRunning, InstanceBackoff, InstanceStopping, InstanceExited, InstanceFailed},
	InstanceStarting: {InstanceClaimed, InstanceRunning, InstanceBackoff, InstanceStopping, InstanceExited, InstanceFailed},
	InstanceRunning:  {InstanceBackoff, InstanceStarting, InstanceStopping, InstanceExited, InstanceFailed},
	InstanceBackoff:  {InstanceStarting, InstanceRunning, InstanceStopping, InstanceExited, InstanceFailed},
	InstanceStopping: {InstanceExited, InstanceFailed},
}

// ValidTransition returns nil if an instance may move from one state to the
// other, and an error wrapping ErrTransition otherwise. Staying in a
// non-terminal state is allowed (a pid or restart count update); every
// non-terminal state may become lost; terminal states are final.
func ValidTransition(from, to InstanceState) error {
	bad := fmt.Errorf("%w %q to %q", ErrTransition, from, to)
	if !from.known() || !to.known() || from.Terminal() {
		return bad
	}
	if from == to || to == InstanceLost {
		return nil
	}
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return bad
}

// Instance is one running (or once running) process of an app revision's
// process type.
type Instance struct {
	ID   string `json:"id"`
	App  string `json:"app"`
	Rev  string `json:"rev"`
	Proc string `json:"proc"`
	// Host is the host that claimed the instance; "" while pending.
	Host string `json:"host,omitempty"`
	Port int    `json:"port,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// PIDStart is the process start time as the supervisor reads it; opaque.
	PIDStart int64         `json:"pid_start,omitempty"`
	State    InstanceState `json:"state"`
	Since    time.Time     `json:"since"`
	// Restarts counts restarts by reason: "fail", "oom", "health", "manual".
	Restarts map[string]int `json:"restarts,omitempty"`
	ExitCode *int           `json:"exit_code,omitempty"`
	Signal   string         `json:"signal,omitempty"`
	// Reason is the termination or failure reason; in backoff it also
	// says when the restart comes ("exit code 3, restarting in 2s").
	Reason string `json:"reason,omitempty"`
	// Health is the error of the instance's last health check while its
	// checks fail ("http check: ... connection refused"), "" when they
	// pass or there is none. The holder writes it only when it changes.
	Health string `json:"health,omitempty"`
	// Ticket is the start ticket that created the instance.
	Ticket string `json:"ticket,omitempty"`
	// StopTicket is the outstanding stop ticket, if any. An instance with a
	// stop ticket no longer counts toward its desired scale.
	StopTicket string `json:"stop_ticket,omitempty"`
	// ReplacedBy names the instance replacing this one (a drain); while
	// set, this one no longer counts toward its scale. Replaces is the
	// reverse link on the replacement.
	ReplacedBy string `json:"replaced_by,omitempty"`
	Replaces   string `json:"replaces,omitempty"`
	// Reserve is what the instance reserves on its host, from its start
	// ticket (Ticket.Reserve, copied by Scale, ReplaceInstance and the
	// claim); nil means the host's default (HostResources.InstanceMemory).
	// Fleet sums it per host.
	Reserve     *Limits   `json:"reserve,omitempty"`
	Created     time.Time `json:"created"`
	ModRevision int64     `json:"-"`
}

// counted reports whether the instance counts toward its desired scale.
func (i Instance) counted() bool {
	return i.State.Live() && i.StopTicket == "" && i.ReplacedBy == ""
}

// Excludes reports whether host may not take the ticket because it
// already failed it. A ticket targeted at host is never excluded so: no
// other host can do its work, and MaxAttempts bounds the tries.
func (t Ticket) Excludes(host string) bool {
	return t.Host != host && slices.Contains(t.FailedHosts, host)
}

// TicketOp is the work a ticket asks for.
type TicketOp string

// Ticket operations.
const (
	TicketStart   TicketOp = "start"
	TicketStop    TicketOp = "stop"
	TicketRestart TicketOp = "restart"
	TicketSignal  TicketOp = "signal"
)

// ticketOps is the one list of the ticket operations.
var ticketOps = []TicketOp{TicketStart, TicketStop, TicketRestart, TicketSignal}

// Valid reports whether op is one of the ticket operations: start, stop,
// restart or signal. Decoding a stored ticket and claiming one check it.
func (op TicketOp) Valid() bool { return slices.Contains(ticketOps, op) }

// Ticket is a work order: start, stop, restart or signal one instance.
type Ticket struct {
	ID       string   `json:"id"`
	Op       TicketOp `json:"op"`
	App      string   `json:"app"`
	Rev      string   `json:"rev"`
	Proc     string   `json:"proc"`
	Instance string   `json:"instance"`
	// Host is the target host; "" means any host may claim (start tickets).
	Host   string `json:"host,omitempty"`
	Signal string `json:"signal,omitempty"`
	// Replaces is the instance a drain's start ticket replaces; the claim
	// copies it into the instance record.
	Replaces string `json:"replaces,omitempty"`
	// Reserve is what a start ticket's instance reserves on its host: the
	// process type's limits when Scale (or ReplaceInstance) wrote the
	// ticket; nil means the host's default reservation.
	Reserve *Limits `json:"reserve,omitempty"`
	// Attempts counts releases; at MaxAttempts (default 3) the ticket is
	// deleted and, for a start ticket, the instance fails.
	Attempts    int       `json:"attempts,omitempty"`
	MaxAttempts int       `json:"max_attempts,omitempty"`
	FailedHosts []string  `json:"failed_hosts,omitempty"`
	Reasons     []string  `json:"reasons,omitempty"`
	Created     time.Time `json:"created"`
	ModRevision int64     `json:"-"`
	// Holder is the host holding the claim, filled when listing; not stored.
	Holder string `json:"-"`
}

// HostLoad is a host's coarse load, updated at a low rate.
type HostLoad struct {
	Load1          float64 `json:"load1"`
	MemUsedPercent float64 `json:"mem_used_percent"`
	Instances      int     `json:"instances"`
}

// HostResources is what a host can give its instances: memory and CPU for
// their reservations (see Limits), and the pids they may use.
type HostResources struct {
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// CPUMillis is in thousandths of a core.
	CPUMillis int `json:"cpu_millis,omitempty"`
	Pids      int `json:"pids,omitempty"`
	// InstanceMemory is what an instance whose process type declares no
	// memory reserves on the host (0: nothing).
	InstanceMemory int64 `json:"instance_memory,omitempty"`
}

// Host is an agent's host record; it exists while the agent's lease lives.
type Host struct {
	ID     string            `json:"id"`
	Addr   string            `json:"addr,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Capacity is the most instances the host runs (its slots); 0 =
	// unlimited. The agent computes it from Resources unless told.
	Capacity int `json:"capacity,omitempty"`
	// Resources is what the host has to give instances; nil when the agent
	// does not say (an older agent).
	Resources *HostResources `json:"resources,omitempty"`
	Version   string         `json:"version,omitempty"`
	// APIAddr is the agent's HTTP API (host:port), "" when it serves none.
	APIAddr string `json:"api_addr,omitempty"`
	// APIScheme is how APIAddr is served: "https" (TLS) or "http"; ""
	// in records of agents older than the field (callers then find out).
	APIScheme   string    `json:"api_scheme,omitempty"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	Load        HostLoad  `json:"load"`
	Draining    bool      `json:"draining,omitempty"`
	ModRevision int64     `json:"-"`
	// Lease is the etcd lease the host key is bound to; not stored.
	Lease int64 `json:"-"`
}
