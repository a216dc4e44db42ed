#!/bin/bash
# mkimage.sh builds the VM image of test/vm: a Debian root file system with
# systemd, the Debian cloud kernel and the harness's command channel,
# made by mmdebstrap from the Debian mirror this machine's apt is configured
# with (nothing is downloaded from anywhere else), as a qcow2 disk plus the
# kernel and initrd to boot it with.
#
# systemd (every package built from its source: systemd, systemd-sysv,
# libsystemd0, libsystemd-shared, udev, libudev1, ...) comes from the same
# mirror's <suite>-backports, pinned by source package; everything else from
# <suite>. Debian 12's own systemd (252) ignores the agent unit's
# DelegateSubgroup=, which needs 254; the build fails if the image's
# systemd is older than that.
#
# Usage: mkimage.sh            builds the image unless cached; prints its directory
#
# The image is cached by content under $VISOR_VM_CACHE (default
# ${XDG_CACHE_HOME:-/var/cache}/visor-vm): its directory is named by the
# sha256 of this script, packages.txt and the guest agent files, so it is
# rebuilt only when one of them changes. Older images are removed. Needs
# root, mmdebstrap, qemu-img and mkfs.ext4.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VISOR_VM_CACHE:-${XDG_CACHE_HOME:-/var/cache}/visor-vm}
key=$(cat "$here/mkimage.sh" "$here/packages.txt" "$here/guest-agent.sh" "$here/guest-agent.service" |
	sha256sum | cut -c1-16)
out="$cache/img-$key"
if [ -f "$out/done" ]; then
	echo "$out"
	exit 0
fi
[ "$(id -u)" = 0 ] || { echo "mkimage.sh: needs root (mmdebstrap, file ownership)" >&2; exit 1; }
for c in mmdebstrap qemu-img mkfs.ext4; do
	command -v "$c" >/dev/null || { echo "mkimage.sh: $c not found (apt-get install mmdebstrap qemu-utils e2fsprogs)" >&2; exit 1; }
done

# The Debian mirror and suite from apt's own configuration (deb822 .sources
# files and one-line .list files): the first entry of the archive
# "debian" (not debian-security) with a plain codename suite.
mirror_line=$(
	{
		for f in /etc/apt/sources.list.d/*.sources; do
			[ -r "$f" ] || continue
			awk 'BEGIN{RS=""; FS="\n"}
			{ uris=""; suites=""; types="";
			  for (i=1;i<=NF;i++) { if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/,"",$i); uris=$i }
			    if ($i ~ /^Suites:/) { sub(/^Suites:[ \t]*/,"",$i); suites=$i }
			    if ($i ~ /^Types:/) { sub(/^Types:[ \t]*/,"",$i); types=$i } }
			  if (types ~ /(^| )deb( |$)/) { split(uris,u," "); split(suites,s," "); print u[1], s[1] } }' "$f"
		done
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -r "$f" ] || continue
			sed -n 's/^[[:space:]]*deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]\{1,\}\)[[:space:]]\{1,\}\([^[:space:]]\{1,\}\).*/\2 \3/p' "$f"
		done
	} | awk '$1 ~ /\/debian\/?$/ && $2 !~ /[-\/]/ {print; exit}'
)
[ -n "$mirror_line" ] || { echo "mkimage.sh: no Debian archive entry (.../debian <codename>) in /etc/apt/sources.list*" >&2; exit 1; }
mirror=${mirror_line% *}
suite=${mirror_line#* }
# The backports entry is a one-line sources entry, which mmdebstrap takes
# as it is: it names the archive keyring where Debian's is installed.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || keyring=
backports="deb${keyring:+ [signed-by=$keyring]} $mirror $suite-backports main"
packages=$(sed 's/#.*//' "$here/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "mkimage.sh: building $out from $mirror $suite" >&2
start=$(date +%s)
# The sources inside the guest name the same mirror (apt is not installed;
# this only documents where the image came from).
# The pin applies to both of mmdebstrap's phases (the essential set pulls
# in libsystemd0 and libudev1): apt reads the chroot's preferences.d.
mmdebstrap --variant=essential --include="$packages" \
	--setup-hook='mkdir -p "$1/etc/apt/preferences.d" && printf "Package: src:systemd\nPin: release n='"$suite"'-backports\nPin-Priority: 990\n" >"$1/etc/apt/preferences.d/visor-vm-systemd"' \
	--customize-hook='echo visor-vm >"$1/etc/hostname"' \
	--customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 visor-vm\n" >"$1/etc/hosts"' \
	--customize-hook='printf "/dev/vda / ext4 rw,noatime 0 1\n" >"$1/etc/fstab"' \
	--customize-hook='chroot "$1" passwd -d root' \
	--customize-hook="install -m 0755 '$here/guest-agent.sh' \"\$1/usr/local/sbin/visor-vm-agent\"" \
	--customize-hook="install -m 0644 '$here/guest-agent.service' \"\$1/etc/systemd/system/visor-vm-agent.service\"" \
	--customize-hook='chroot "$1" systemctl enable visor-vm-agent.service systemd-networkd.service' \
	--customize-hook='chroot "$1" systemctl mask e2scrub_reap.service e2scrub_all.timer fstrim.timer systemd-timesyncd.service getty@tty1.service serial-getty@ttyS0.service' \
	--customize-hook='mkdir -p "$1/etc/systemd/journald.conf.d" && printf "[Journal]\nStorage=persistent\n" >"$1/etc/systemd/journald.conf.d/visor-vm.conf"' \
	--customize-hook='v=$(chroot "$1" dpkg-query -W -f="\${Version}" systemd) && echo "$v" >"'"$work"'/systemd-version" && dpkg --compare-versions "$v" ge 254 || { echo "mkimage.sh: systemd $v in the image, want >= 254 (from '"$suite"'-backports)" >&2; exit 1; }' \
	--customize-hook='cp -L "$1/vmlinuz" "$1/initrd.img" "'"$work"'/"' \
	--customize-hook='rm -f "$1/etc/machine-id" && : >"$1/etc/machine-id"' \
	"$suite" "$work/root" "$mirror" "$backports" >&2
truncate -s 3G "$work/root.ext4"
mkfs.ext4 -q -F -L visor-root -d "$work/root" "$work/root.ext4"
qemu-img convert -f raw -O qcow2 "$work/root.ext4" "$work/base.qcow2"
rm -rf "$work/root" "$work/root.ext4"
{
	echo "mirror $mirror $suite, systemd $(cat "$work/systemd-version") from $suite-backports"
	echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - start)) s"
} >"$work/info"
# Older images (other keys) go; the new one appears atomically.
for old in "$cache"/img-*; do
	[ -e "$old" ] && [ "$old" != "$out" ] && rm -rf "$old"
done
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
: >"$out/done"
echo "$out"
