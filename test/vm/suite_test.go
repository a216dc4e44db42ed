package vm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/visorhq/visor/internal/testcerts"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// Registry settings of the suite's agents (short, so that a lost host is
// replaced quickly).
const (
	prefix       = "/visor-vm/"
	agentUser    = "visor" // the agents' certificate's common name
	rootPass     = "vm-root-secret"
	appUser      = "visorapp"
	filePort     = 7070
	templateName = "tmpl-v1" // change when the guests' device set changes
)

// repoRoot is the repository's root directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

// requireVM skips the test, with the reason, where the suite cannot run:
// not root, or qemu, qemu-img, mmdebstrap or ip missing (`make test-deps`
// installs them as root where apt is available).
func requireVM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("VM suite skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("VM suite needs root (network namespaces, taps, image building); skipped as non-root")
	}
	for _, c := range []string{"qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4", "ip"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("VM suite needs %s (apt-get install qemu-system-x86 qemu-utils mmdebstrap, or make test-deps): not found", c)
		}
	}
	if runtime.GOARCH != "amd64" {
		t.Skipf("VM suite boots amd64 guests; this is %s", runtime.GOARCH)
	}
}

// buildImage builds (or finds in the cache) the VM image.
func buildImage(t testing.TB) image {
	t.Helper()
	// One build at a time on this machine (mkimage.sh's own cache
	// directory, as it computes it).
	cache := os.Getenv("VISOR_VM_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			base = "/var/cache"
		}
		cache = filepath.Join(base, "visor-vm")
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, "build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command(filepath.Join(repoRoot(), "test", "vm", "image", "mkimage.sh"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("mkimage.sh: %v\n%s", err, tailString(stderr.String(), 40))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	dir := lines[len(lines)-1]
	t.Logf("image %s ready in %s", dir, time.Since(start).Round(100*time.Millisecond))
	return image{dir: dir}
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// template returns the saved booted guest of im: a disk (overlay of the
// base) and a state file, made once per image: a guest booted to
// multi-user with no network configuration, saved by migration to a file.
// A lock file keeps two suites from making it at once.
func template(ctx context.Context, t testing.TB, n *network, im image) (disk, state string) {
	t.Helper()
	dir := filepath.Join(im.dir, templateName)
	disk, state = filepath.Join(dir, "tmpl.qcow2"), filepath.Join(dir, "state")
	lock, err := os.OpenFile(filepath.Join(im.dir, "template.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return disk, state
	}
	start := time.Now()
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	g := newGuest(n, im, dir, "tmpl", 9)
	if err := n.addTap(g.tap, true); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", im.base(), g.disk()).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	defer g.kill()
	if err := g.start(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if err := g.waitAgent(ctx); err != nil {
		t.Fatal(err)
	}
	booted := time.Since(start)
	out, _, err := g.run(ctx, "systemctl is-system-running --wait; systemctl --failed --no-legend")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("template guest booted in %s: %s", booted.Round(100*time.Millisecond), strings.TrimSpace(out))
	if _, err := g.must(ctx, "sync"); err != nil {
		t.Fatal(err)
	}
	if err := g.saveState(ctx, g.disk()+".state"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(g.disk(), disk); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(g.disk()+".state", state); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "done"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("template saved %s after the start (boot %s)", time.Since(start).Round(100*time.Millisecond), booted.Round(100*time.Millisecond))
	return disk, state
}

// fleet is the suite's world: namespace, etcd, guests, packages.
type fleet struct {
	t        *testing.T
	ctx      context.Context
	cancel   context.CancelFunc
	dir      string
	net      *network
	im       image
	certs    testcerts.Files
	agentTLS struct{ cert, key string } // client certificate, CN agentUser
	tmpl     struct{ disk, state string }
	debs     map[string]*deb // by version; the map is fixed once newFleet returns
	guests   []*guest
	cli      *clientv3.Client
	reg      *registry.Registry
	files    net.Listener
	bg       sync.WaitGroup

	mu      sync.Mutex
	members []*exec.Cmd
	serve   map[string]string // name -> file the file server hands out
}

// etcdEndpoints are the members' client URLs, as the guests reach them.
func etcdEndpoints() []string {
	var eps []string
	for i := 1; i <= 3; i++ {
		eps = append(eps, "https://"+memberAddr(i).String()+":2379")
	}
	return eps
}

// newFleet builds the image (or finds it cached), the namespace, the etcd
// cluster (TLS, auth with a user limited to the prefix), the template, the
// packages (in the background) and guests h1..h<guests>, restored from the
// template in parallel while etcd elects its leader and is set up. One
// cleanup tears everything down.
func newFleet(t *testing.T, withDebs bool, guests int) *fleet {
	t.Helper()
	requireVM(t)
	checkRangeUnused(t)
	ctx, cancel := context.WithCancel(context.Background())
	if dl, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(context.Background(), dl.Add(-testtime.Scaled(time.Minute)))
	}
	f := &fleet{t: t, ctx: ctx, cancel: cancel, serve: map[string]string{}}
	t.Cleanup(f.teardown)
	f.im = buildImage(t)
	f.net = newNetwork(t)
	f.dir = runDir(f.net.tag)
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var ips []net.IP
	for i := 1; i <= 3; i++ {
		ips = append(ips, net.IP(memberAddr(i).AsSlice()))
	}
	f.certs = testcerts.NewFor(t, ips...)
	f.agentTLS.cert, f.agentTLS.key = f.certs.Client(t, agentUser)
	f.debs = map[string]*deb{}
	if withDebs {
		for _, v := range debVersions {
			f.debs[v] = &deb{ready: make(chan struct{})}
		}
		f.bg.Add(1)
		go func() { defer f.bg.Done(); f.buildDebs() }() // read by waitDeb
	}
	for i := 1; i <= 3; i++ {
		f.startMember(i)
	}
	f.tmpl.disk, f.tmpl.state = template(ctx, t, f.net, f.im)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, guests)
	for i := 1; i <= guests; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i-1] = f.addGuest(i) }()
	}
	func() {
		// Also when connect fails the test (Goexit): the restores end
		// with f.ctx and are waited for before the cleanup runs.
		defer func() {
			if t.Failed() {
				f.cancel()
			}
			wg.Wait()
		}()
		f.connect()
		f.startFileServer()
	}()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d guests up in %s", guests, time.Since(start).Round(100*time.Millisecond))
	return f
}

// deb is one package the suite builds: path or err are set when ready is
// closed.
type deb struct {
	ready chan struct{}
	path  string
	err   error
}

// debVersions are the packages' versions, in build order: the installed
// one first, then the upgrade.
var debVersions = []string{"0.0.1~vm1", "0.0.1~vm2"}

// waitDeb waits for the package of version v that newFleet started
// building and returns its path.
func (f *fleet) waitDeb(ctx context.Context, v string) (string, error) {
	d, ok := f.debs[v]
	if !ok {
		return "", fmt.Errorf("no package %s is built by this suite", v)
	}
	select {
	case <-d.ready:
		return d.path, d.err
	case <-ctx.Done():
		return "", fmt.Errorf("package %s not built: %w", v, ctx.Err())
	}
}

// teardown stops the guests, etcd and the file server, and has the janitor
// remove the namespace and the disks.
func (f *fleet) teardown() {
	t := f.t
	if t.Failed() && f.dir != "" {
		for i := 1; i <= 3; i++ {
			// Without checkCertAuth's expected refusal of "vm-stranger"
			// (logged with a stack trace by every member).
			var kept []string
			for _, l := range strings.Split(tail(filepath.Join(f.dir, fmt.Sprintf("etcd%d.log", i)), 40), "\n") {
				if !strings.Contains(l, `"vm-stranger"`) {
					kept = append(kept, l)
				}
			}
			if len(kept) > 10 {
				kept = kept[len(kept)-10:]
			}
			t.Logf("etcd member %d log (tail):\n%s", i, strings.Join(kept, "\n"))
		}
	}
	if t.Failed() {
		for _, g := range f.guests {
			t.Logf("%s console (tail):\n%s", g.name, tail(g.console(), 40))
			if out, _, err := g.run(context.Background(), "journalctl -u visor-agent --no-pager -n 60"); err == nil {
				t.Logf("%s journal of visor-agent (tail):\n%s", g.name, out)
			}
		}
	}
	f.cancel()
	for _, g := range f.guests {
		if err := g.kill(); err != nil {
			t.Error(err)
		}
	}
	if f.files != nil {
		f.files.Close()
	}
	if f.cli != nil {
		f.cli.Close()
	}
	f.mu.Lock()
	members := f.members
	f.mu.Unlock()
	for _, m := range members {
		_ = m.Process.Kill()
	}
	f.bg.Wait() // the package builder (its commands end with f.ctx), the file server, the members
	if f.net != nil {
		f.net.teardown(t) // kills what is left in the namespace, removes the run's disks
	}
}

// buildDebs builds the packages of debVersions, one after the other, and
// marks each ready as soon as it is built (the install does not wait for
// the upgrade's package); after a failure the later ones fail too.
func (f *fleet) buildDebs() {
	var err error
	for _, v := range debVersions {
		d := f.debs[v]
		start := time.Now()
		if err == nil {
			d.path, err = f.buildDeb(v)
			f.t.Logf("package %s built in %s", v, time.Since(start).Round(100*time.Millisecond))
		}
		d.err = err
		close(d.ready)
	}
}

// buildDeb builds the package of version v of the working tree as `make
// package` does (go build, then nfpm with packaging/nfpm.yaml) in a staging
// directory laid out like the repository (nfpm's sources are relative),
// so that nothing is written into the repository's bin/, and returns its
// path.
func (f *fleet) buildDeb(v string) (string, error) {
	root := repoRoot()
	stage := filepath.Join(f.dir, "stage-"+strings.ReplaceAll(v, "~", "-"))
	for _, d := range []string{"bin/package", "systemd", "packaging/scripts", "out"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return "", err
		}
	}
	for _, file := range []string{
		"systemd/visor-agent.service", "packaging/nfpm.yaml", "packaging/agent.json",
		"packaging/agent.example.json", "packaging/visor.tmpfiles.conf",
		"packaging/scripts/postinstall.sh", "packaging/scripts/preremove.sh", "packaging/scripts/postremove.sh",
	} {
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(stage, file), data, 0o755); err != nil {
			return "", err
		}
	}
	ldflags := "-X github.com/visorhq/visor/internal/version.Version=v" + strings.ReplaceAll(v, "~", "-") +
		" -X github.com/visorhq/visor/internal/version.Commit=vmtest"
	build := exec.CommandContext(f.ctx, "go", "build", "-ldflags", ldflags, "-o", filepath.Join(stage, "bin/package/visor"), "./cmd/visor")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", v, err, out)
	}
	pkg := exec.CommandContext(f.ctx, "go", "run", "github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2", "package", "-f", "packaging/nfpm.yaml", "-p", "deb", "-t", "out/")
	pkg.Dir = stage
	pkg.Env = append(os.Environ(), "GOARCH=amd64", "PKG_VERSION="+v)
	if out, err := pkg.CombinedOutput(); err != nil {
		return "", fmt.Errorf("nfpm %s: %v\n%s", v, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(stage, "out", "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("nfpm made %v, want one .deb", debs)
	}
	return debs[0], nil
}

// startMember starts etcd member i in the namespace.
func (f *fleet) startMember(i int) {
	f.t.Helper()
	var cluster []string
	for j := 1; j <= 3; j++ {
		cluster = append(cluster, fmt.Sprintf("e%d=https://%s:2380", j, memberAddr(j)))
	}
	logf, err := os.Create(filepath.Join(f.dir, fmt.Sprintf("etcd%d.log", i)))
	if err != nil {
		f.t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", f.net.ns, os.Args[0])
	cmd.Env = append(os.Environ(),
		etcdModeEnv+"=1",
		etcdNameEnv+"="+fmt.Sprintf("e%d", i),
		etcdDirEnv+"="+filepath.Join(f.dir, fmt.Sprintf("etcd%d", i)),
		etcdClientEnv+"="+etcdEndpoints()[i-1],
		etcdPeerEnv+"="+fmt.Sprintf("https://%s:2380", memberAddr(i)),
		etcdClusterEnv+"="+strings.Join(cluster, ","),
		etcdCertEnv+"="+f.certs.ServerCert+" "+f.certs.ServerKey+" "+f.certs.CA,
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		f.t.Fatal(err)
	}
	f.bg.Add(1)
	go func() { defer f.bg.Done(); _ = cmd.Wait(); logf.Close() }()
	f.mu.Lock()
	f.members = append(f.members, cmd)
	f.mu.Unlock()
}

// connect waits for the cluster, enables auth with a root user and the
// agents' user "visor", whose role may read and write the prefix only, and
// connects the suite's registry client as root. etcd requires a client
// certificate of every client: the agents authenticate by theirs (common
// name "visor", no password); the suite's client presents one whose common
// name is no etcd user and becomes root by password, so both ways an
// operator authenticates to etcd are exercised.
func (f *fleet) connect() {
	t := f.t
	t.Helper()
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(f.certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	clientCfg := func(cn, user, pass string) clientv3.Config {
		certPath, keyPath := f.certs.Client(t, cn)
		pair, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		return clientv3.Config{
			Endpoints:   etcdEndpoints(),
			DialTimeout: testtime.Scaled(30 * time.Second),
			TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
			Username:    user, Password: pass,
			Logger:      zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(f.net.dial)},
		}
	}
	cli, err := clientv3.New(clientCfg("vm-harness", "", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(f.ctx, testtime.Scaled(2*time.Minute))
	defer cancel()
	steps := []func() error{
		func() error { // waits for a leader
			try, cancel := context.WithTimeout(ctx, testtime.Scaled(10*time.Second))
			defer cancel()
			_, err := cli.Put(try, prefix+"suite", "vm")
			if err != nil {
				t.Logf("etcd not answering yet: %v", err)
			}
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "root", rootPass); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "visor-agent"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "visor-agent", prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		// A user without password: it can only authenticate by certificate.
		func() error {
			_, err := cli.UserAddWithOptions(ctx, agentUser, "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := cli.UserGrantRole(ctx, agentUser, "visor-agent"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := retry(ctx, step); err != nil {
			t.Fatalf("etcd set-up step %d: %v (member log: %s)", i, err, tail(filepath.Join(f.dir, "etcd1.log"), 5))
		}
	}
	if f.cli, err = clientv3.New(clientCfg("vm-harness", "root", rootPass)); err != nil {
		t.Fatal(err)
	}
	f.reg = registry.New(f.cli, prefix, hclog.NewNullLogger())
	f.checkCertAuth(ctx, clientCfg)
}

// checkCertAuth checks etcd's certificate authentication: the agents'
// certificate (common name "visor") may write the prefix and nothing
// else; a certificate whose common name is no etcd user may write
// nothing.
func (f *fleet) checkCertAuth(ctx context.Context, clientCfg func(cn, user, pass string) clientv3.Config) {
	t := f.t
	t.Helper()
	ac, err := clientv3.New(clientCfg(agentUser, "", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	if _, err := ac.Put(ctx, "/elsewhere", "x"); err == nil {
		t.Fatal("etcd user visor (by certificate) may write outside the prefix")
	}
	if _, err := ac.Put(ctx, prefix+"probe", "x"); err != nil {
		t.Fatalf("etcd user visor (by certificate) cannot write its prefix: %v", err)
	}
	sc, err := clientv3.New(clientCfg("vm-stranger", "", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if _, err := sc.Put(ctx, prefix+"probe", "x"); err == nil {
		t.Fatal("a certificate whose common name is no etcd user may write the prefix")
	}
}

// retry runs step until it succeeds or ctx ends (etcd's first leader
// election, a member not yet up).
func retry(ctx context.Context, step func() error) error {
	tk := time.NewTicker(200 * time.Millisecond)
	defer tk.Stop()
	for {
		err := step()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-tk.C:
		}
	}
}

// startFileServer serves files to the guests on member 1's address: a
// guest connects (bash's /dev/tcp), sends a name and a newline, and reads
// the file until EOF. Only names the suite registered are served.
func (f *fleet) startFileServer() {
	l, err := f.net.listen(net.JoinHostPort(memberAddr(1).String(), strconv.Itoa(filePort)))
	if err != nil {
		f.t.Fatal(err)
	}
	f.files = l
	f.bg.Add(1)
	go func() {
		defer f.bg.Done()
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() { defer conns.Done(); f.serveFile(c) }()
		}
	}()
}

func (f *fleet) serveFile(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testtime.Scaled(2 * time.Minute)))
	var name []byte
	buf := make([]byte, 1)
	for len(name) < 256 {
		if _, err := c.Read(buf); err != nil || buf[0] == '\n' {
			break
		}
		name = append(name, buf[0])
	}
	f.mu.Lock()
	path, ok := f.serve[string(name)]
	f.mu.Unlock()
	if !ok {
		return
	}
	if src, err := os.Open(path); err == nil {
		_, _ = io.Copy(c, src)
		src.Close()
	}
}

// offer makes the file server hand out path as name.
func (f *fleet) offer(name, path string) {
	f.mu.Lock()
	f.serve[name] = path
	f.mu.Unlock()
}

// fetchScript is the guest's side of the file server: it writes name to
// dst and checks its size.
func fetchScript(name, dst string, size int64) string {
	return fmt.Sprintf(`exec 3<>/dev/tcp/%s/%d && printf '%%s\n' %q >&3 && cat <&3 >%q && exec 3<&- && test "$(stat -c %%s %q)" = %d`,
		memberAddr(1), filePort, name, dst, dst, size)
}
