#!/bin/sh
# Runs after the package's files are removed: deb postrm ("remove", "purge",
# "upgrade", ...), rpm %postun ($1 = 0 on erase, 1 on upgrade). Remove keeps
# the configuration (/etc/visor) and state (/var/lib/visor); purge deletes
# them, the systemd drop-in and a service user this package created.
set -e

case "$1" in
remove | 0)
	rmdir /run/visor 2>/dev/null || true
	;;
purge)
	if [ -r /etc/visor/.created-user ]; then
		created=$(cat /etc/visor/.created-user)
	fi
	rm -rf /etc/visor /var/lib/visor /run/visor
	rm -f /etc/systemd/system/visor-agent.service.d/user.conf
	rmdir /etc/systemd/system/visor-agent.service.d 2>/dev/null || true
	if [ -n "${created:-}" ] && getent passwd "$created" >/dev/null; then
		userdel "$created" || true
		if getent group "$created" >/dev/null; then groupdel "$created" || true; fi
	fi
	;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
