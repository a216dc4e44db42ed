package cgroup

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Backend modes reported by [Manager.Mode].
const (
	ModeV2   = "v2"
	ModeV1   = "v1"
	ModeNone = "none"
)

// DefaultRoot is where cgroup file systems are mounted.
const DefaultRoot = "/sys/fs/cgroup"

// cpuPeriod is the CFS period used for CPU limits, in microseconds.
const cpuPeriod = 100_000

var (
	// ErrInvalidLimits is returned (wrapped) for negative or too small limits.
	ErrInvalidLimits = errors.New("cgroup: invalid limits")
	// ErrInvalidID is returned (wrapped) for a group id that could escape
	// its parent.
	ErrInvalidID = errors.New("cgroup: invalid id")
	// ErrNoController is returned (wrapped) when a limit needs a controller
	// this host does not offer.
	ErrNoController = errors.New("cgroup: controller not available")
	// ErrNotFound is returned (wrapped) by Open for a missing group.
	ErrNotFound = errors.New("cgroup: group not found")
	// ErrBusy is returned (wrapped) by Create when a group with that id
	// already holds processes, and by Kill when a group does not empty.
	ErrBusy = errors.New("cgroup: group has processes")
)

// Limits are the resource limits of one group. Zero fields mean unlimited.
type Limits struct {
	// MemoryBytes caps memory use; the kernel OOM-kills inside the group
	// when it is exceeded.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// CPUMillis caps CPU time in thousandths of a core (1000 = one core);
	// at least 10 when set.
	CPUMillis int `json:"cpu_millis,omitempty"`
	// Pids caps the number of processes and threads.
	Pids int `json:"pids,omitempty"`
}

// Validate reports an error naming the first invalid field.
func (l Limits) Validate() error {
	switch {
	case l.MemoryBytes < 0:
		return fmt.Errorf("%w: memory_bytes %d is negative", ErrInvalidLimits, l.MemoryBytes)
	case l.CPUMillis < 0:
		return fmt.Errorf("%w: cpu_millis %d is negative", ErrInvalidLimits, l.CPUMillis)
	case l.CPUMillis > 0 && l.CPUMillis < 10:
		return fmt.Errorf("%w: cpu_millis %d is below the minimum of 10", ErrInvalidLimits, l.CPUMillis)
	case l.Pids < 0:
		return fmt.Errorf("%w: pids %d is negative", ErrInvalidLimits, l.Pids)
	}
	return nil
}

// IsZero reports whether no limit is set.
func (l Limits) IsZero() bool { return l == Limits{} }

// Stats is the resource usage of a group.
type Stats struct {
	// MemoryBytes is the memory currently charged to the group.
	MemoryBytes uint64
	// CPUUsage is the CPU time consumed by the group so far.
	CPUUsage time.Duration
}

// validateID checks that id names exactly one directory below the parent.
func validateID(what, id string) error {
	switch {
	case id == "", id == ".", id == "..":
		return fmt.Errorf("%w: %s %q", ErrInvalidID, what, id)
	case strings.ContainsAny(id, "/\x00\n"), len(id) > 200:
		return fmt.Errorf("%w: %s %q", ErrInvalidID, what, id)
	}
	return nil
}

// cpuQuota converts CPUMillis to a CFS quota in microseconds per cpuPeriod.
func cpuQuota(millis int) int64 { return int64(millis) * cpuPeriod / 1000 }
