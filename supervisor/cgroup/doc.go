// Package cgroup puts each supervised process (and everything it forks) in
// its own control group, applies memory, CPU and pid limits, kills the whole
// group, and reads OOM kills and usage back.
//
// [Probe] chooses a backend once at start-up:
//
//   - "v2": the unified hierarchy offers memory, cpu and pids and they can be
//     enabled in cgroup.subtree_control. Limits go to memory.max, cpu.max
//     and pids.max; the child is cloned straight into its group
//     (CLONE_INTO_CGROUP), and [Group.Kill] writes cgroup.kill.
//   - "v1": the legacy memory, cpu and pids hierarchies are writable (any
//     subset; a limit whose controller is missing is refused with
//     [ErrNoController]). Limits go to memory.limit_in_bytes,
//     cpu.cfs_quota_us/cpu.cfs_period_us and pids.max; cpuacct (usage) and
//     freezer (kill) are used when present.
//   - "none": no usable controller. Groups are no-ops; the supervisor relies
//     on process groups alone. Probe logs this once at Warn.
//
// # The v1 fork→join race
//
// v1 has no CLONE_INTO_CGROUP: the child can only be moved into its v1
// groups after fork, and anything it forks before that escapes them. Where
// the unified (v2) hierarchy is mounted next to v1 without controllers, as
// on hybrid hosts, the v1 backend also gives each group a controller-less
// v2 group used for tracking: the child is cloned into it, so membership is
// exact from the first instruction, [Group.PIDs] and [Group.Kill]
// (cgroup.kill) use it, and the "after" function of [Group.Prepare] moves
// every member — not only the child — into the v1 groups, repeating until no
// new member appears. Without a unified hierarchy the race remains and only
// the child is moved; [Group.Kill] then freezes the group (freezer) before
// killing so nothing can fork while it is emptied.
//
// # Where the groups go
//
// On v2 the parent group (e.g. "visor") is made below the agent's
// delegated subtree when systemd runs the agent in a subgroup of a
// delegated unit cgroup (Delegate=yes with DelegateSubgroup=, systemd 254
// and later; systemd marks the unit's cgroup with the trusted.delegate
// attribute), and below the hierarchy root otherwise: older systemd runs
// the agent in the delegated cgroup itself, where controllers enabled for
// children would keep the unit from starting again while instances run.
// A v1 hierarchy (or tracking group) on a read-only mount is not used.
//
// Processes outlive the agent, so groups do too: [Manager.Open] re-attaches
// to an existing group by id.
//
// This package must not import go.etcd.io/..., the registry, the agent, or
// the supervisor package (the supervisor imports it).
package cgroup
