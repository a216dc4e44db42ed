//go:build linux

package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// limitControllers are the controllers limits are written to.
var limitControllers = []string{"memory", "cpu", "pids"}

// killTimeout bounds how long Kill waits for a group to empty.
const killTimeout = 5 * time.Second

// Manager creates and opens the groups of one parent cgroup. It is safe for
// concurrent use; it holds no mutable state after Probe.
type Manager struct {
	logger      hclog.Logger
	mode        string
	controllers []string // usable, in probe order
	// v2: the parent directory in the unified hierarchy. v1: the parent in
	// a controller-less unified hierarchy used for tracking ("" if none).
	unified string
	// v1: controller -> parent directory (memory, cpu, pids, cpuacct, freezer).
	v1 map[string]string
	// killTimeout bounds Kill; zero means killTimeout (tests shorten it).
	killTimeout time.Duration
}

// Group is one instance's cgroup (one directory per hierarchy).
type Group struct {
	m       *Manager
	id      string
	unified string            // group dir in the unified hierarchy, or ""
	v1      map[string]string // controller -> group dir
}

// Probe finds the best backend under root (DefaultRoot when empty) and
// prepares the parent group (e.g. "visor") in it. It tries v2, then v1,
// then settles for "none", which it logs once at Warn. It fails only for an
// invalid parent name.
func Probe(root, parent string, logger hclog.Logger) (*Manager, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	logger = logger.Named("cgroup")
	if err := validateID("parent", parent); err != nil {
		return nil, err
	}
	if root == "" {
		root = DefaultRoot
	}
	m := &Manager{logger: logger, mode: ModeNone}
	unifiedRoot := findUnified(root)
	if unifiedRoot != "" {
		base := delegatedBase(unifiedRoot, selfCgroupFile, logger)
		if ctrls, dir, err := probeV2(base, parent); err == nil {
			m.mode, m.controllers, m.unified = ModeV2, ctrls, dir
			logger.Info("cgroup backend", "mode", m.mode, "controllers", strings.Join(ctrls, ","), "dir", dir)
			return m, nil
		} else {
			logger.Debug("cgroup v2 not usable", "dir", base, "error", err)
		}
	}
	m.v1 = probeV1(root, parent, logger)
	for _, c := range []string{"memory", "cpu", "pids", "cpuacct", "freezer"} {
		if _, ok := m.v1[c]; ok {
			m.controllers = append(m.controllers, c)
		}
	}
	if !slices.ContainsFunc(m.controllers, func(c string) bool { return slices.Contains(limitControllers, c) }) {
		m.v1, m.controllers = nil, nil
		logger.Warn("no usable cgroup controller; processes are tracked by process group only", "root", root)
		return m, nil
	}
	m.mode = ModeV1
	if unifiedRoot != "" {
		m.unified = probeTracking(unifiedRoot, parent)
	}
	logger.Info("cgroup backend", "mode", m.mode, "controllers", strings.Join(m.controllers, ","),
		"unified_tracking", m.unified != "")
	return m, nil
}

// findUnified returns the unified hierarchy under root: root itself (pure
// v2) or root/unified (hybrid), or "".
func findUnified(root string) string {
	for _, d := range []string{root, filepath.Join(root, "unified")} {
		if _, err := os.Stat(filepath.Join(d, "cgroup.controllers")); err == nil {
			return d
		}
	}
	return ""
}

// probeV2 enables memory, cpu and pids for the parent's children and
// returns them with the parent dir.
func probeV2(uroot, parent string) ([]string, string, error) {
	avail, err := readWords(filepath.Join(uroot, "cgroup.controllers"))
	if err != nil {
		return nil, "", err
	}
	for _, c := range limitControllers {
		if !slices.Contains(avail, c) {
			return nil, "", fmt.Errorf("%w: %s not in cgroup.controllers", ErrNoController, c)
		}
	}
	enable := "+memory +cpu +pids"
	if err := writeFile(filepath.Join(uroot, "cgroup.subtree_control"), enable); err != nil {
		return nil, "", err
	}
	dir := filepath.Join(uroot, parent)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, "", fmt.Errorf("create parent: %w", err)
	}
	if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), enable); err != nil {
		return nil, "", err
	}
	got, err := readWords(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return nil, "", err
	}
	for _, c := range limitControllers {
		if !slices.Contains(got, c) {
			return nil, "", fmt.Errorf("%w: %s not enabled in %s", ErrNoController, c, dir)
		}
	}
	return slices.Clone(limitControllers), dir, nil
}

// probeV1 returns controller -> parent dir for each usable v1 hierarchy.
// A hierarchy mounted read-only (as in containers and systemd-nspawn on
// hybrid hosts) is not usable even where the parent already exists: mkdir
// reports EEXIST before EROFS, and every group created later would fail.
func probeV1(root, parent string, logger hclog.Logger) map[string]string {
	dirs := make(map[string]string)
	for _, c := range []string{"memory", "cpu", "pids", "cpuacct", "freezer"} {
		base := filepath.Join(root, c)
		if _, err := os.Stat(filepath.Join(base, "cgroup.procs")); err != nil {
			continue
		}
		dir := filepath.Join(base, parent)
		if err := makeWritableDir(dir); err != nil {
			logger.Debug("cgroup v1 controller not writable", "controller", c, "error", err)
			continue
		}
		dirs[c] = dir
	}
	return dirs
}

// makeWritableDir creates dir unless it exists, and checks that it is on a
// writable mount.
func makeWritableDir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	return nil
}

// probeTracking prepares a controller-less parent in the unified hierarchy
// for exact membership and cgroup.kill, or returns "".
func probeTracking(uroot, parent string) string {
	dir := filepath.Join(uroot, parent)
	if err := makeWritableDir(dir); err != nil {
		return ""
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		return "" // kernel older than 5.14, or not a cgroup2 file system
	}
	return dir
}

// Mode returns the backend: "v2", "v1" or "none".
func (m *Manager) Mode() string { return m.mode }

// Controllers returns the usable controllers (v1 may add cpuacct, freezer).
func (m *Manager) Controllers() []string { return slices.Clone(m.controllers) }

func (m *Manager) has(c string) bool { return slices.Contains(m.controllers, c) }
