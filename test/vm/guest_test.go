package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// addGuest makes guest i (h<i>, address .10+i): an overlay of the
// template's disk, a tap on the bridge, and qemu restoring the template's
// state; then configures it (configure).
func (f *fleet) addGuest(i int) (*guest, error) {
	g := newGuest(f.net, f.im, f.dir, fmt.Sprintf("h%d", i), i)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", f.tmpl.disk, g.disk()).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu-img create: %v: %s", err, out)
	}
	if err := f.net.addTap(g.tap, false); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.guests = append(f.guests, g)
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(f.ctx, testtime.Scaled(10*time.Minute))
	defer cancel()
	start := time.Now()
	if err := g.start(ctx, f.tmpl.state); err != nil {
		return nil, err
	}
	if err := g.waitAgent(ctx); err != nil {
		return nil, err
	}
	restored := time.Since(start)
	if err := f.configure(ctx, g); err != nil {
		return nil, err
	}
	f.t.Logf("%s restored in %s, configured after %s", g.name, restored.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
	return g, nil
}

// configure gives a restored guest its identity, persistently (it survives
// a reboot): the clock, hostname, MAC and address (systemd-networkd), the
// etcd CA and the agents' client certificate, the instances' user; then
// waits until etcd is reachable.
func (f *fleet) configure(ctx context.Context, g *guest) error {
	var pems [3][]byte
	for i, p := range []string{f.certs.CA, f.agentTLS.cert, f.agentTLS.key} {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		pems[i] = b
	}
	script := fmt.Sprintf(`set -e
date -u -s @%d >/dev/null
echo %[2]s >/etc/hostname && hostname %[2]s
printf '127.0.0.1 localhost\n127.0.1.1 %[2]s\n' >/etc/hosts
mkdir -p /etc/systemd/network
cat >/etc/systemd/network/10-eth0.network <<'EOT'
[Match]
Name=eth0
[Link]
MACAddress=%[3]s
[Network]
Address=%[4]s/24
LinkLocalAddressing=no
EOT
ip link set eth0 down
ip link set eth0 address %[3]s
ip link set eth0 up
networkctl reload
networkctl reconfigure eth0
mkdir -p /etc/visor-vm
cat >/etc/visor-vm/etcd-ca.pem <<'EOT'
%[5]sEOT
cat >/etc/visor-vm/agent.pem <<'EOT'
%[8]sEOT
(umask 077 && cat >/etc/visor-vm/agent-key.pem <<'EOT'
%[9]sEOT
)
getent passwd %[6]s >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin %[6]s
for i in $(seq 1 300); do
	if timeout 2 bash -c '</dev/tcp/%[7]s/2379' 2>/dev/null; then exit 0; fi
	sleep 0.2
done
echo "etcd at %[7]s:2379 not reachable"; ip addr; exit 1
`, time.Now().Unix(), g.name, g.mac, guestAddr(g.idx), pems[0], appUser, memberAddr(1), pems[1], pems[2])
	_, err := g.must(ctx, script)
	return err
}

// agentConfig is /etc/visor/agent.json of guest g: the documented keys
// (packaging/README.md) with the suite's etcd and TLS, and a short TTL
// and grace so that a lost host is replaced quickly, yet longer together
// (30 s) than an agent restart takes under emulation on a loaded machine
// (23 s at load 30; at ttl 5s + grace 5s scenario 3's restart lost its
// instances to replacements, and renewals missed the 5 s lease): the agent
// authenticates by its client certificate (common name agentUser, the
// etcd user), with no username or password.
func agentConfig(g *guest) string {
	return fmt.Sprintf(`{
  "endpoints": %q,
  "prefix": %q,
  "ca_file": "/etc/visor-vm/etcd-ca.pem",
  "cert_file": "/etc/visor-vm/agent.pem",
  "key_file": "/etc/visor-vm/agent-key.pem",
  "host": %q,
  "data_dir": "/var/lib/visor",
  "run_dir": "/run/visor",
  "http_addr": "off",
  "ttl": "10s",
  "lost_grace": "20s",
  "reconcile_interval": "5s",
  "capacity": "40",
  "log_level": "debug"
}
`, strings.Join(etcdEndpoints(), ","), prefix, g.name)
}

// installDeb waits for the package of version v, copies it into the guest
// and installs it with dpkg -i.
func (f *fleet) installDeb(ctx context.Context, g *guest, v string) error {
	path, err := f.waitDeb(ctx, v)
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	name := filepath.Base(path)
	f.offer(name, path)
	dst := "/root/" + name
	if _, err := g.must(ctx, fetchScript(name, dst, st.Size())); err != nil {
		return err
	}
	_, err = g.must(ctx, "dpkg -i "+dst)
	return err
}
