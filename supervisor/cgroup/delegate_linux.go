//go:build linux

package cgroup

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// selfCgroupFile lists the calling process's cgroups.
const selfCgroupFile = "/proc/self/cgroup"

// delegatedBase returns where the v2 parent group goes: the agent's
// delegated subtree when there is one it may use, else the unified root.
//
// systemd marks the cgroup of a unit with Delegate=yes with the extended
// attribute trusted.delegate (user.delegate for user managers). The agent
// may put its instances' groups there only if it does not itself run in
// that cgroup: enabling controllers for children (cgroup.subtree_control)
// is refused for, and then blocks, a cgroup with processes of its own
// ("no internal processes"), and since the agent's instances outlive
// it (KillMode=process), the next start of the unit would fail to place
// the new agent there (status=219/CGROUP). With DelegateSubgroup=agent
// (systemd 254 and later) systemd starts the agent in <unit>/agent,
// and the instances' parent is <unit>/<parent>. Older systemd (Debian
// bookworm's 252) starts the agent in the delegated cgroup itself: the
// instances then stay below the unified root, which the log says.
func delegatedBase(unifiedRoot, selfFile string, logger hclog.Logger) string {
	own := ownUnifiedCgroup(selfFile)
	if own == "" || own == "/" {
		return unifiedRoot
	}
	ownDir := filepath.Join(unifiedRoot, own)
	unitDir := filepath.Dir(ownDir)
	switch {
	case delegated(unitDir) && unitDir != unifiedRoot:
		logger.Info("cgroup: using the delegated subtree of the agent's unit", "dir", unitDir)
		return unitDir
	case delegated(ownDir):
		logger.Info("cgroup: the agent runs in its unit's delegated cgroup itself (no DelegateSubgroup=, systemd < 254); "+
			"instance groups go below the hierarchy root so that the unit can restart while they run", "agent_cgroup", own)
	}
	return unifiedRoot
}

// ownUnifiedCgroup returns the process's cgroup in the unified hierarchy
// (the "0::" line of selfFile), or "".
func ownUnifiedCgroup(selfFile string) string {
	f, err := os.Open(selfFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p
		}
	}
	return ""
}

// delegated reports whether systemd delegated dir (trusted.delegate or
// user.delegate is "1").
func delegated(dir string) bool {
	buf := make([]byte, 8)
	for _, attr := range []string{"trusted.delegate", "user.delegate"} {
		if n, err := unix.Getxattr(dir, attr, buf); err == nil && string(buf[:n]) == "1" {
			return true
		}
	}
	return false
}
