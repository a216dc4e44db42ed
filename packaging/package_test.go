package packaging_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// nfpm is the packager, run through the Go toolchain like `make package`.
const nfpm = "github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2"

// pkgVersion marks packages built by this test; a leftover from an
// interrupted run is recognised by it and purged.
const (
	pkgVersion = "0.0.0~pkgtest"
	binVersion = "v0.0.0-pkgtest"
	testUser   = "visor"
)

// hostPaths are every path the package or its scripts create on the host.
var hostPaths = []string{
	"/usr/bin/visor",
	"/lib/systemd/system/visor-agent.service",
	"/etc/visor",
	"/usr/share/doc/visor",
	"/usr/lib/tmpfiles.d/visor.conf",
	"/var/lib/visor",
	"/run/visor",
	"/etc/systemd/system/visor-agent.service.d",
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func runCmd(t *testing.T, ctx context.Context, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// buildDeb builds visor and the .deb from packaging/nfpm.yaml in a staging
// directory laid out like the repository (nfpm's sources are relative).
func buildDeb(t *testing.T, ctx context.Context) string {
	t.Helper()
	root := repoRoot(t)
	stage := t.TempDir()
	for _, d := range []string{"bin/package", "systemd", "packaging/scripts", "out"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{
		"systemd/visor-agent.service", "packaging/nfpm.yaml", "packaging/agent.json",
		"packaging/agent.example.json", "packaging/visor.tmpfiles.conf",
		"packaging/scripts/postinstall.sh", "packaging/scripts/preremove.sh", "packaging/scripts/postremove.sh",
	} {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stage, f), data, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	ldflags := "-X github.com/visorhq/visor/internal/version.Version=" + binVersion +
		" -X github.com/visorhq/visor/internal/version.Commit=pkgtest" +
		" -X github.com/visorhq/visor/internal/version.Date=2026-01-02T03:04:05Z"
	runCmd(t, ctx, root, []string{"CGO_ENABLED=0"}, "go", "build", "-ldflags", ldflags, "-o", filepath.Join(stage, "bin/package/visor"), "./cmd/visor")
	env := []string{"GOARCH=" + goarch(t), "PKG_VERSION=" + pkgVersion}
	runCmd(t, ctx, stage, env, "go", "run", nfpm, "package", "-f", "packaging/nfpm.yaml", "-p", "deb", "-t", "out/")
	debs, _ := filepath.Glob(filepath.Join(stage, "out", "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("nfpm made %v, want one .deb", debs)
	}
	return debs[0]
}

func goarch(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOARCH").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// installedVersion returns the installed version of the visor package, or
// "" when it is not installed.
func installedVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", "visor").Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || f[0] == "un" {
		return ""
	}
	return f[len(f)-1]
}

// checkMachineFree refuses to run on a machine that has Visor installed
// otherwise; a package left by an interrupted run of this test is purged.
func checkMachineFree(t *testing.T) {
	t.Helper()
	if v := installedVersion(); v != "" {
		if !strings.HasPrefix(v, pkgVersion) {
			t.Fatalf("a visor package %s is installed on this machine; the package test will not touch it", v)
		}
		t.Logf("purging visor %s left by an interrupted run", v)
		if _, err := systemDpkg().run(context.Background(), nil, "-P", "visor"); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s exists on this machine; the package test will not overwrite it", p)
		}
	}
	if _, err := user.Lookup(testUser); err == nil {
		t.Fatalf("user %q exists on this machine; the package test creates and deletes it", testUser)
	}
}

type fileWant struct {
	path  string
	dir   bool
	mode  fs.FileMode
	owner string // user name
	group string
}

func checkFile(t *testing.T, w fileWant) {
	t.Helper()
	fi, err := os.Lstat(w.path)
	if err != nil {
		t.Errorf("%s: %v", w.path, err)
		return
	}
	if fi.IsDir() != w.dir {
		t.Errorf("%s: directory = %v, want %v", w.path, fi.IsDir(), w.dir)
	}
	if fi.Mode().Perm() != w.mode {
		t.Errorf("%s: mode %v, want %v", w.path, fi.Mode().Perm(), w.mode)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if u, err := user.LookupId(strconv.Itoa(int(st.Uid))); err != nil || u.Username != w.owner {
		t.Errorf("%s: owner uid %d (%v), want %s", w.path, st.Uid, err, w.owner)
	}
	if g, err := user.LookupGroupId(strconv.Itoa(int(st.Gid))); err != nil || g.Name != w.group {
		t.Errorf("%s: group gid %d (%v), want %s", w.path, st.Gid, err, w.group)
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// nsEnv marks the test binary re-executed in a private mount namespace.
const nsEnv = "VISOR_PACKAGING_TEST_IN_MOUNT_NS"

// TestDebPackage builds the .deb, installs it on this machine with dpkg,
// checks every file, the user and the permissions, runs the installed
// binary (version, and a dev-mode agent that must notify READY=1 and
// STOPPING=1 like under systemd), then removes and purges the package and
// checks that nothing is left.
//
// The body runs in a private mount namespace with a fresh tmpfs on /run:
// the package's scripts create and delete /run/visor, which agents started
// by other tests on this machine may be using at the same time.
func TestDebPackage(t *testing.T) {
	if os.Getenv(nsEnv) == "1" {
		if err := syscall.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755,size=16m"); err != nil {
			t.Fatalf("mount tmpfs on /run: %v", err)
		}
		if err := os.Mkdir("/run/lock", 0o1777); err != nil {
			t.Fatal(err)
		}
		debPackage(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("the package test installs a .deb with dpkg and needs root; run the suite as root to cover it")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("dpkg not installed: this is not a Debian-family machine, the .deb cannot be installed")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare(1) not installed; cannot give the package test a private /run")
	}
	// Whatever happens in the namespace, leave the machine as it was.
	t.Cleanup(func() {
		if installedVersion() != "" {
			// Purge with a private /run too: postremove deletes /run/visor.
			out, err := exec.Command(unshare, "--mount", "--propagation", "private", "--",
				"sh", "-c", "mount -t tmpfs tmpfs /run && dpkg -P visor").CombinedOutput()
			if err != nil {
				t.Errorf("cleanup: dpkg -P visor: %v\n%s", err, out)
			}
		}
	})
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "--",
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout="+testtime.Scaled(9*time.Minute).String())
	cmd.Env = append(os.Environ(), nsEnv+"=1")
	// The test in the namespace dies with this one, even when this one is
	// killed or times out (unshare execs it, keeping the signal).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	t.Logf("in mount namespace:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("package test in mount namespace: %v", err)
	}
	// Back on the host's view of the file system: nothing is left.
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); p != "/run/visor" && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left on the host (%v)", p, err)
		}
	}
	if _, err := user.Lookup(testUser); err == nil {
		t.Errorf("user %s left on the host", testUser)
	}
	if v := installedVersion(); v != "" {
		t.Errorf("visor %s left installed", v)
	}
}

// debPackage is TestDebPackage's body, run in the mount namespace.
func debPackage(t *testing.T) {
	checkMachineFree(t)
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(8*time.Minute))
	defer cancel()

	deb := buildDeb(t, ctx)
	t.Logf("built %s", deb)

	// Whatever happens below, leave the machine as it was.
	t.Cleanup(func() {
		if installedVersion() != "" {
			if _, err := systemDpkg().run(context.Background(), nil, "-P", "visor"); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		for _, p := range hostPaths {
			os.RemoveAll(p)
		}
		if _, err := user.Lookup(testUser); err == nil {
			exec.Command("userdel", testUser).Run()
		}
	})

	mustDpkg(t, ctx, []string{"VISOR_SYSTEM_USER=" + testUser}, "-i", deb)
	if v := installedVersion(); v != pkgVersion+"-1" {
		t.Fatalf("installed version %q, want %s-1", v, pkgVersion)
	}

	t.Run("files", func(t *testing.T) {
		u, err := user.Lookup(testUser)
		if err != nil {
			t.Fatalf("user %s not created: %v", testUser, err)
		}
		if uid, _ := strconv.Atoi(u.Uid); uid >= 1000 || uid == 0 {
			t.Errorf("user %s has uid %d, want a system uid", testUser, uid)
		}
		g, err := user.LookupGroupId(u.Gid)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []fileWant{
			{path: "/usr/bin/visor", mode: 0o755, owner: "root", group: "root"},
			{path: "/lib/systemd/system/visor-agent.service", mode: 0o644, owner: "root", group: "root"},
			{path: "/etc/visor", dir: true, mode: 0o755, owner: "root", group: "root"},
			{path: "/etc/visor/agent.json", mode: 0o640, owner: "root", group: g.Name},
			{path: "/usr/share/doc/visor/agent.example.json", mode: 0o644, owner: "root", group: "root"},
			{path: "/usr/lib/tmpfiles.d/visor.conf", mode: 0o644, owner: "root", group: "root"},
			{path: "/var/lib/visor", dir: true, mode: 0o750, owner: testUser, group: g.Name},
			{path: "/run/visor", dir: true, mode: 0o755, owner: "root", group: "root"},
			{path: "/etc/systemd/system/visor-agent.service.d/user.conf", mode: 0o644, owner: "root", group: "root"},
		} {
			checkFile(t, w)
		}
		root := repoRoot(t)
		for dst, src := range map[string]string{
			"/lib/systemd/system/visor-agent.service": "systemd/visor-agent.service",
			"/etc/visor/agent.json":                   "packaging/agent.json",
			"/usr/share/doc/visor/agent.example.json": "packaging/agent.example.json",
		} {
			got, err1 := os.ReadFile(dst)
			want, err2 := os.ReadFile(filepath.Join(root, src))
			if err1 != nil || err2 != nil || !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (%v, %v)", dst, src, err1, err2)
			}
		}
		dropIn, err := os.ReadFile("/etc/systemd/system/visor-agent.service.d/user.conf")
		if err != nil || !strings.Contains(string(dropIn), "\n[Service]\nUser="+testUser+"\n") {
			t.Errorf("drop-in = %q, %v; want [Service] User=%s", dropIn, err, testUser)
		}

		// dpkg owns exactly these files, and the config is a conffile.
		var owned []string
		for _, l := range strings.Split(runCmd(t, ctx, "/", nil, "dpkg", "-L", "visor"), "\n") {
			if l = strings.TrimSpace(l); l != "" && l != "/." {
				if fi, err := os.Stat(l); err == nil && !fi.IsDir() {
					owned = append(owned, l)
				}
			}
		}
		sort.Strings(owned)
		wantOwned := []string{
			"/etc/visor/agent.json",
			"/lib/systemd/system/visor-agent.service",
			"/usr/bin/visor",
			"/usr/lib/tmpfiles.d/visor.conf",
			"/usr/share/doc/visor/agent.example.json",
		}
		if !slices.Equal(owned, wantOwned) {
			t.Errorf("dpkg -L visor files = %q, want %q", owned, wantOwned)
		}
		conf := runCmd(t, ctx, "/", nil, "dpkg-query", "-W", "-f=${Conffiles}", "visor")
		if !strings.Contains(conf, "/etc/visor/agent.json") {
			t.Errorf("conffiles = %q, want /etc/visor/agent.json", conf)
		}
		// Never started by the install.
		if pids := processesOf("/usr/bin/visor"); len(pids) > 0 {
			t.Errorf("install started /usr/bin/visor: pids %v", pids)
		}
	})

	t.Run("version", func(t *testing.T) {
		out := runCmd(t, ctx, "/", nil, "/usr/bin/visor", "version")
		if want := "visor " + binVersion + " (commit pkgtest, built 2026-01-02T03:04:05Z)"; strings.TrimSpace(out) != want {
			t.Errorf("visor version = %q, want %q", out, want)
		}
		var v struct{ Version, Commit, Date string }
		if err := json.Unmarshal([]byte(runCmd(t, ctx, "/", nil, "/usr/bin/visor", "version", "-o", "json")), &v); err != nil || v.Version != binVersion || v.Commit != "pkgtest" {
			t.Errorf("visor version -o json = %+v, %v", v, err)
		}
	})

	t.Run("reinstall keeps edited config", func(t *testing.T) {
		orig, err := os.ReadFile("/etc/visor/agent.json")
		if err != nil {
			t.Fatal(err)
		}
		edited := bytes.Replace(orig, []byte(`"log_level": "info"`), []byte(`"log_level": "debug"`), 1)
		if bytes.Equal(edited, orig) {
			t.Fatal(`packaged agent.json has no "log_level": "info" to edit`)
		}
		if err := os.WriteFile("/etc/visor/agent.json", edited, 0o640); err != nil {
			t.Fatal(err)
		}
		// Same package again: prerm upgrade, then postinst configure with
		// the old version, as on an upgrade. No user is configured now.
		mustDpkg(t, ctx, []string{"VISOR_SYSTEM_USER="}, "-i", deb)
		if got, err := os.ReadFile("/etc/visor/agent.json"); err != nil || !bytes.Equal(got, edited) {
			t.Errorf("edited config replaced on reinstall (%v):\n%s", err, got)
		}
		if _, err := user.Lookup(testUser); err != nil {
			t.Errorf("user %s gone after reinstall: %v", testUser, err)
		}
		if _, err := os.Stat("/etc/systemd/system/visor-agent.service.d/user.conf"); err != nil {
			t.Errorf("drop-in gone after reinstall: %v", err)
		}
	})

	t.Run("dev-smoke", func(t *testing.T) {
		devSmoke(t, ctx)
	})

	// State the agent left behind; remove keeps it, purge deletes it.
	state := "/var/lib/visor/instances/state.json"
	if err := os.MkdirAll(filepath.Dir(state), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustDpkg(t, ctx, nil, "-r", "visor")
	t.Run("removed", func(t *testing.T) {
		for _, p := range []string{"/usr/bin/visor", "/lib/systemd/system/visor-agent.service", "/usr/lib/tmpfiles.d/visor.conf", "/usr/share/doc/visor", "/run/visor"} {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s still there after dpkg -r (%v)", p, err)
			}
		}
		// Remove keeps the configuration, the state and the user.
		for _, p := range []string{"/etc/visor/agent.json", state, "/etc/systemd/system/visor-agent.service.d/user.conf"} {
			if _, err := os.Lstat(p); err != nil {
				t.Errorf("%s gone after dpkg -r: %v", p, err)
			}
		}
		if _, err := user.Lookup(testUser); err != nil {
			t.Errorf("user %s gone after dpkg -r: %v", testUser, err)
		}
	})

	mustDpkg(t, ctx, nil, "-P", "visor")
	t.Run("purged", func(t *testing.T) {
		for _, p := range hostPaths {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s still there after dpkg -P (%v)", p, err)
			}
		}
		if _, err := user.Lookup(testUser); err == nil {
			t.Errorf("user %s still there after dpkg -P", testUser)
		}
		if _, err := user.LookupGroup(testUser); err == nil {
			t.Errorf("group %s still there after dpkg -P", testUser)
		}
		if v := installedVersion(); v != "" {
			t.Errorf("dpkg still knows visor %s after purge", v)
		}
	})
}

// devSmoke runs the installed agent in dev mode (embedded etcd on free
// ports, temporary state) with the packaged config, as systemd would with
// Type=notify: it must send READY=1, and STOPPING=1 then exit 0 on SIGTERM.
func devSmoke(t *testing.T, ctx context.Context) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctx, "/usr/bin/visor", "agent", "-dev",
		"-config", "/etc/visor/agent.json",
		"-data-dir", filepath.Join(dir, "data"),
		"-run-dir", filepath.Join(dir, "run"),
		"-dev-client-url", fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		"-dev-peer-url", fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		"-http-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"-host", "pkgtest",
	)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			<-exited
		}
		t.Logf("agent output:\n%s", logs.String())
	}()

	// The reader goroutine ends when conn is closed; stop unblocks its sends.
	states := make(chan string)
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			sc := bufio.NewScanner(bytes.NewReader(buf[:n]))
			for sc.Scan() {
				select {
				case states <- sc.Text():
				case <-stop:
					return
				}
			}
		}
	}()
	defer func() {
		close(stop)
		conn.Close()
		<-readerDone
	}()
	await := func(want string, d time.Duration) {
		t.Helper()
		d = testtime.Scaled(d)
		timer := time.NewTimer(d)
		defer timer.Stop()
		for {
			select {
			case s := <-states:
				if s == want {
					return
				}
			case err := <-exited:
				waited = true
				t.Fatalf("agent exited (%v) before notifying %s", err, want)
			case <-timer.C:
				t.Fatalf("no %s from the agent within %v", want, d)
			}
		}
	}
	await("READY=1", 90*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	await("STOPPING=1", 30*time.Second)
	select {
	case err := <-exited:
		waited = true
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(testtime.Scaled(30 * time.Second)):
		t.Fatalf("agent did not exit within %v of SIGTERM", testtime.Scaled(30*time.Second))
	}
}

// processesOf returns the pids whose executable is exe.
func processesOf(exe string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && l == exe {
			pids = append(pids, pid)
		}
	}
	return pids
}
