// Package vm is Visor's end-to-end suite on booted hosts (issue 16): small
// Debian guests with systemd as PID 1, run by qemu under software
// emulation (TCG: no /dev/kvm needed), get Visor from its .deb and run
// the agent as the packaged systemd unit against a three-member etcd
// cluster outside them, as an operator would run it: TLS, client
// certificates required, auth on; the agents authenticate by a
// certificate whose common name is an etcd user limited to the registry
// prefix, the suite's own client as root by password. TestVM runs three
// guests (h1-h3), restored while etcd is set up; scenarios 5 and 6
// overlap. The scenarios assert through etcd and inside the guests
// (systemctl, /proc, the journal).
//
// # Image
//
// image/mkimage.sh builds the guests' image with mmdebstrap from the
// Debian mirror apt is configured with (nothing else is downloaded):
// systemd, the Debian cloud kernel and the harness's command channel, as
// a qcow2 disk with the kernel and initrd beside it. Everything is from
// the configured suite (Debian 12, bookworm) except systemd, which comes from the
// same mirror's <suite>-backports (254; every package of its source is
// pinned there): bookworm's 252 ignores the agent unit's
// DelegateSubgroup=agent. The scenarios check that layout on the guests
// (checkLayout): the agent in <unit cgroup>/agent, each instance in
// <unit cgroup>/visor/<instance id> with the app's limits, after a start,
// a restart, an upgrade and a boot. It is cached by
// content (the script, the package list and the channel's files) in
// $VISOR_VM_CACHE, default ${XDG_CACHE_HOME:-/var/cache}/visor-vm, and
// rebuilt only when they change (`make vm-image` builds it ahead).
//
// # Guests
//
// A guest is booted once per image to multi-user, then saved by migration
// to a file (its disk an overlay of the image's); every test guest is an
// overlay of that disk restoring that state, so it is up in seconds
// instead of a boot. After the restore the harness sets its clock,
// hostname, MAC and address (persistently, with systemd-networkd, so that
// a reboot keeps them). Commands go over a virtio-serial port to a tiny
// service in the image (image/guest-agent.sh): no ssh, no guest network
// needed for control. Files (the .deb) are fetched by the guest over the
// bridge from a server of the suite's.
//
// # Network
//
// One network namespace of the suite's own (vsrv<pid>-net) holds a bridge
// with the etcd members' addresses 198.51.100.1-3 and one tap per guest
// (guests at 198.51.100.11-13). The range is checked unused on the
// machine first; nothing is added to the root namespace, nothing is
// routed out. qemu and the etcd members run inside the namespace.
//
// # Cleanup
//
// qemu and etcd get SIGKILL when the test process dies (Pdeathsig), the
// test process when go test dies; a janitor process (this test binary in
// its janitor mode, in a session of its own) waits for EOF on a pipe only
// the test holds and then kills everything left in the namespace, deletes
// it and the run's overlay disks; the next run also removes the leftovers
// of runs whose process is gone. TestKilledHarnessLeavesNothing checks
// this on a harness of its own (etcd and one guest; 7 s after TestVM's
// template is made). It is not run beside TestVM: there it took 23 s and
// slowed TestVM's restores by about as much as it saved.
//
// The suite needs root, qemu-system-x86_64, qemu-img and mmdebstrap
// (`make test-deps` installs them with apt); without them it skips with a
// message. Deadlines scale with VISOR_TEST_TIMEOUT_SCALE.
package vm
