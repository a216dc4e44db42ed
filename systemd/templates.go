package systemd

// unitText is the systemd unit template. Every directive carries a comment
// saying why it is there; the hardening section also lists what is left out
// on purpose, because instances are the agent's children and inherit its
// sandbox: anything that restricts the agent restricts every workload.
const unitText = `# {{.Name}}.service: the Visor host agent.
# Rendered by "visor service render --init systemd"; "visor service install"
# writes it to /etc/systemd/system/, the packages to /lib/systemd/system/.

[Unit]
# Shown by systemctl status.
Description=Visor host agent
# Where operators find out what this is.
Documentation=https://github.com/visorhq/visor
# The agent dials etcd at start-up: start once the network is configured.
Wants=network-online.target
# Ordering for the Wants= above.
After=network-online.target
# Never give up restarting: an agent that keeps failing (etcd down for a long
# time) must come back once the cause is gone.
StartLimitIntervalSec=0

[Service]
# The agent sends READY=1 once its registry session is up and STOPPING=1 when
# it begins to shut down, so "systemctl start" returns when it is serving.
Type=notify
# Only the agent's own process may notify: a workload that inherited
# $NOTIFY_SOCKET must not be able to mark the agent ready or stopping.
NotifyAccess=main
# The agent; its flags were given to "visor service install".
ExecStart={{.Exec}}
{{- if .User}}
# Run as this user instead of root (workloads then run as this user too, and
# the agent cannot manage their cgroups unless given the rights).
User={{.User}}
{{- end}}
# Restart after a crash or a non-zero exit; "systemctl stop" stays stopped.
Restart=on-failure
# Pause between restarts so a crash loop does not hammer etcd.
RestartSec=5s
# Stop signals only the agent: the instances it supervises live in their own
# process groups, outlive an agent restart and are re-adopted by the next
# agent (pid + start time), so they must not be killed with it.
KillMode=process
# The agent shuts down on SIGTERM: it closes its session and exits 0.
KillSignal=SIGTERM
# Time to reach etcd and send READY=1 before systemd declares a failed start.
TimeoutStartSec=120s
# Time for the agent's own shutdown before SIGKILL (instances are not stopped).
TimeoutStopSec=30s
# Hand the agent its cgroup subtree. With DelegateSubgroup (systemd 254 and
# later) the agent runs in <unit>/agent and puts a cgroup per instance in
# <unit>/visor; older systemd ignores the key and starts the agent in the
# unit's cgroup itself, where instance cgroups with controllers would keep
# the unit from starting again while they run, so the agent then makes them
# under /sys/fs/cgroup/visor (it logs which).
Delegate=yes
DelegateSubgroup=agent
# /var/lib/visor: instance records and logs; owned by User= when set.
StateDirectory=visor
# State may include environment secrets of apps: not world-readable. Others
# may only search it (o+x), to reach the artifact releases handed to
# instances running as other users; every entry keeps its own mode.
StateDirectoryMode=0751
# /run/visor: the local API socket.
RuntimeDirectory=visor
# Local CLI users reach the socket; the socket's own mode does the gating.
RuntimeDirectoryMode=0755
# Keep /run/visor across agent restarts: re-adopted instances and CLI users
# keep finding the socket directory.
RuntimeDirectoryPreserve=yes
# Workloads inherit the agent's limits; servers need many descriptors.
LimitNOFILE=1048576
# Workloads are counted in this unit's cgroup: do not cap their tasks.
TasksMax=infinity
# The agent's logs go to stderr, which the journal collects.
StandardError=journal

# Hardening that does not get in the way of user workloads (they inherit
# the agent's sandbox). No workload should load kernel modules: this drops
# CAP_SYS_MODULE and hides the module tree (the kernel's own module
# auto-loading still works).
ProtectKernelModules=yes
# No workload should read or clear the kernel log: drops CAP_SYSLOG, hides
# /dev/kmsg and /proc/kmsg.
ProtectKernelLogs=yes
# Not set, on purpose: NoNewPrivileges (workloads may run setuid binaries and
# the agent switches to each app's user), ProtectSystem/ProtectHome/
# PrivateTmp/ReadOnlyPaths (workloads write where their apps expect; a private
# /tmp would also differ between an instance and the agent that re-adopts it),
# PrivateDevices and ProtectClock (both install a device allow-list that, with
# Delegate=yes, also cuts workloads off /dev/fuse, /dev/kvm, GPUs, ...),
# ProtectHostname (the agent would not see a later hostname change),
# ProtectKernelTunables and ProtectControlGroups (the agent writes cgroups;
# workloads may tune sysctls), RestrictNamespaces and SystemCallFilter
# (workloads may use containers or any system call), MemoryDenyWriteExecute
# (breaks JIT runtimes), SystemCallArchitectures (breaks 32-bit workloads),
# OOMScoreAdjust (inherited by every workload).

[Install]
# Start at boot in normal multi-user operation.
WantedBy=multi-user.target
`

// plistText is the launchd property list template (launchd.plist(5)).
const plistText = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- {{.Name}}: the Visor host agent. Rendered by "visor service render" for launchd
     (no double hyphen may appear in an XML comment); "visor service install" writes
     it to /Library/LaunchDaemons/{{.Name}}.plist. -->
<plist version="1.0">
<dict>
	<!-- The job's name for launchctl. -->
	<key>Label</key>
	<string>{{.Name}}</string>
	<!-- The agent and the flags given to "visor service install". -->
	<key>ProgramArguments</key>
	<array>
{{- range .Argv}}
		<string>{{xml .}}</string>
{{- end}}
	</array>
{{- if .User}}
	<!-- Run as this user instead of root. -->
	<key>UserName</key>
	<string>{{xml .User}}</string>
{{- end}}
	<!-- Start when loaded, i.e. at boot. -->
	<key>RunAtLoad</key>
	<true/>
	<!-- Restart after a crash or a non-zero exit, like Restart=on-failure. -->
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<!-- Pause between restarts, like RestartSec. -->
	<key>ThrottleInterval</key>
	<integer>5</integer>
	<!-- Instances outlive an agent restart and are re-adopted: do not kill the
	     agent's process groups with it, like KillMode=process. -->
	<key>AbandonProcessGroup</key>
	<true/>
	<!-- Seconds between SIGTERM and SIGKILL on stop, like TimeoutStopSec. -->
	<key>ExitTimeOut</key>
	<integer>30</integer>
	<!-- The agent logs to stderr. -->
	<key>StandardErrorPath</key>
	<string>{{xml .LogPath}}</string>
	<key>StandardOutPath</key>
	<string>{{xml .LogPath}}</string>
</dict>
</plist>
`
