#!/bin/sh
# Runs before the package's files are removed: deb prerm ("remove",
# "upgrade", ...), rpm %preun ($1 = 0 on erase, 1 on upgrade). On removal it
# stops and disables the agent. Instances keep running (KillMode=process):
# drain the host first if they should not.
set -e

case "$1" in
remove | 0) ;;
*) exit 0 ;; # upgrade: postinstall of the new version restarts the agent
esac

if [ -d /run/systemd/system ]; then
	systemctl stop visor-agent.service || true
	systemctl disable visor-agent.service >/dev/null 2>&1 || true
fi
exit 0
