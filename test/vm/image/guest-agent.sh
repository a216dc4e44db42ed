#!/bin/bash
# visor-vm-agent: the test harness's command channel inside a VM guest
# (test/vm). It reads one request per line from the virtio-serial port
# org.visor.cmd: "<id> <base64 of a bash script>", runs the script as root
# with stdin from /dev/null, and answers "<id> <exit code> <base64 of
# stdout and stderr>". One request at a time. No network is involved.
set -u
port=/dev/virtio-ports/org.visor.cmd
until [ -e "$port" ]; do sleep 0.2; done
exec 3<>"$port"
echo "visor-vm-agent: serving $port"
while IFS=' ' read -r id req <&3; do
	[ -n "$id" ] || continue
	script=$(printf '%s' "$req" | base64 -d)
	out=$(bash -c "$script" </dev/null 2>&1)
	rc=$?
	printf '%s %d %s\n' "$id" "$rc" "$(printf '%s' "$out" | base64 -w0)" >&3
done
