#!/bin/sh
# Runs after the package's files are in place: deb postinst ("configure",
# $2 = previously configured version, empty on a first install), rpm %post
# ($1 = 1 on install, 2 on upgrade). It never starts or enables the service:
# an operator does that (systemctl enable --now visor-agent).
set -e

case "$1" in
configure) if [ -n "$2" ]; then upgrade=1; else upgrade=0; fi ;;
1) upgrade=0 ;;
2) upgrade=1 ;;
*) exit 0 ;; # deb abort-upgrade, abort-remove, ...: nothing to undo
esac

# The service user is created only when one is configured: with
# VISOR_SYSTEM_USER in the installer's environment
# (VISOR_SYSTEM_USER=visor apt-get install ./visor.deb) or in
# /etc/default/visor. Otherwise the agent runs as root, which it needs to run
# workloads as their apps' users and to manage their cgroups.
user="${VISOR_SYSTEM_USER:-}"
if [ -z "$user" ] && [ -r /etc/default/visor ]; then
	user=$(sed -n 's/^[[:space:]]*VISOR_SYSTEM_USER=["]\{0,1\}\([a-z_][a-z0-9_-]*\)["]\{0,1\}[[:space:]]*$/\1/p' /etc/default/visor | tail -n 1)
fi
if [ -n "$user" ]; then
	if ! getent passwd "$user" >/dev/null; then
		nologin=$(command -v nologin || echo /usr/sbin/nologin)
		useradd --system --user-group --no-create-home --home-dir /var/lib/visor \
			--shell "$nologin" --comment "Visor host agent" "$user"
		# Remembered so that purge removes only a user this package created.
		echo "$user" >/etc/visor/.created-user
	fi
	group=$(id -gn "$user")
	chown "$user:$group" /var/lib/visor
	# The agent reads its config; others may not (it can hold secrets).
	chgrp "$group" /etc/visor/agent.json
	mkdir -p /etc/systemd/system/visor-agent.service.d
	cat >/etc/systemd/system/visor-agent.service.d/user.conf <<EOT
# Written by the visor package's postinstall: VISOR_SYSTEM_USER=$user.
[Service]
User=$user
EOT
fi

# The socket directory, for the current boot (tmpfiles recreates it at boot).
if command -v systemd-tmpfiles >/dev/null 2>&1; then
	systemd-tmpfiles --create /usr/lib/tmpfiles.d/visor.conf || mkdir -p /run/visor
else
	mkdir -p /run/visor
fi

# Tell systemd about the new or changed unit, only if systemd is PID 1.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	# An upgrade restarts an agent that was running, onto the new binary;
	# its instances keep running and are re-adopted. A first install starts
	# nothing.
	if [ "$upgrade" = 1 ]; then
		systemctl try-restart visor-agent.service || true
	fi
fi
exit 0
