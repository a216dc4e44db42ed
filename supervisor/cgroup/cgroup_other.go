//go:build !linux

package cgroup

import (
	"fmt"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// Manager is the cgroup backend; without Linux it is always "none".
type Manager struct{}

// Group is a no-op group outside Linux.
type Group struct{ id string }

// Probe returns a "none" manager: control groups are Linux-only. It logs
// this once at Warn.
func Probe(root, parent string, logger hclog.Logger) (*Manager, error) {
	if err := validateID("parent", parent); err != nil {
		return nil, err
	}
	if logger != nil {
		logger.Named("cgroup").Warn("no usable cgroup controller; processes are tracked by process group only")
	}
	return &Manager{}, nil
}

// Mode returns "none".
func (m *Manager) Mode() string { return ModeNone }

// Controllers returns nil.
func (m *Manager) Controllers() []string { return nil }

// Create returns a no-op group; any limit fails with ErrNoController.
func (m *Manager) Create(id string, l Limits) (*Group, error) {
	if err := validateID("id", id); err != nil {
		return nil, err
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if !l.IsZero() {
		return nil, fmt.Errorf("%w: mode none", ErrNoController)
	}
	return &Group{id: id}, nil
}

// Open returns a no-op group.
func (m *Manager) Open(id string) (*Group, error) {
	if err := validateID("id", id); err != nil {
		return nil, err
	}
	return &Group{id: id}, nil
}

// ID returns the group's id.
func (g *Group) ID() string { return g.id }

// Prepare does nothing.
func (g *Group) Prepare(attr *syscall.SysProcAttr) (func(pid int) error, error) {
	return func(int) error { return nil }, nil
}

// Kill does nothing.
func (g *Group) Kill() error { return nil }

// PIDs returns nil.
func (g *Group) PIDs() ([]int, error) { return nil, nil }

// OOMKills returns 0.
func (g *Group) OOMKills() (uint64, error) { return 0, nil }

// Stats returns zero stats.
func (g *Group) Stats() (Stats, error) { return Stats{}, nil }

// Remove does nothing.
func (g *Group) Remove() error { return nil }
