package supervisor

import (
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
)

// Names of the test's own user and groups, removed at start (a crashed
// earlier run) and at the end.
const (
	credUser  = "visortest-shapp"
	credGroup = "visortest-shapp" // the user's primary group
	credExtra = "visortest-shextra"
)

// testUser creates credUser with primary group credGroup and supplementary
// group credExtra, removing them when the test ends.
func testUser(t *testing.T) (u *user.User, extra *user.Group) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("run-as needs root")
	}
	for _, tool := range []string{"useradd", "groupadd", "userdel", "groupdel"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s to create a test user: %v", tool, err)
		}
	}
	cleanup := func() {
		_ = exec.Command("userdel", credUser).Run()
		_ = exec.Command("groupdel", credGroup).Run()
		_ = exec.Command("groupdel", credExtra).Run()
	}
	cleanup()
	t.Cleanup(cleanup)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("groupadd", credExtra)
	run("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
		"--groups", credExtra, credUser)
	u, err := user.Lookup(credUser)
	if err != nil {
		t.Fatal(err)
	}
	if extra, err = user.LookupGroup(credExtra); err != nil {
		t.Fatal(err)
	}
	return u, extra
}

// sharedDir is a directory the test user may write to, removed at the end.
func sharedDir(t *testing.T, u *user.User) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "visor-cred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// procIDs returns the Uid (real), Gid (real) and Groups lines of pid.
func procIDs(t *testing.T, pid int) (uid, gid string, groups []string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 1 && f[0] == "Uid:":
			uid = f[1]
		case len(f) > 1 && f[0] == "Gid:":
			gid = f[1]
		case len(f) > 0 && f[0] == "Groups:":
			groups = f[1:]
		}
	}
	return uid, gid, groups
}

// TestExecCheckRunsAsInstanceUser is issue 14 row 1: an instance runs as an
// unprivileged user, and its exec health check runs a script that the app
// itself (re)writes at start. The check must run with the instance's uid,
// gid and supplementary groups, never as root.
func TestExecCheckRunsAsInstanceUser(t *testing.T) {
	u, extra := testUser(t)
	dir := sharedDir(t, u)
	check := filepath.Join(dir, "check.sh")
	// The operator's script, handed to the app's user as the app's files are.
	if err := os.WriteFile(check, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(check, uid, gid); err != nil {
		t.Fatal(err)
	}
	rootOnly := filepath.Join(dir, "root-only")
	if err := os.Mkdir(rootOnly, 0o700); err != nil {
		t.Fatal(err)
	}
	// The app rewrites its check script: the new one records who runs it
	// and tries to write where only root may.
	line := "cat >check.sh.new <<'EOF'\n" +
		"#!/bin/sh\n" +
		"echo $(id -u) $(id -g) $(id -G) >ids.$$ && mv ids.$$ ids\n" +
		"touch root-only/pwned 2>/dev/null\n" +
		"exit 0\n" +
		"EOF\n" +
		"chmod 755 check.sh.new && mv check.sh.new check.sh && exec sleep 600"
	h := start(t, Config{})
	spec := Spec{ID: "app", Shell: line, Dir: dir, User: credUser, Env: []string{"PATH=" + DefaultPath},
		Health: &HealthCheck{Type: CheckExec, Command: []string{check}, Period: 100 * time.Millisecond, Timeout: 10 * time.Second}}
	st, err := h.Start(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, h.Supervisor, "app", StateRunning)

	// The instance itself: the user's uid, primary gid and groups.
	puid, pgid, groups := procIDs(t, st.PID)
	if puid != u.Uid || pgid != u.Gid || !slices.Contains(groups, extra.Gid) || slices.Contains(groups, "0") {
		t.Fatalf("instance runs as uid %s gid %s groups %v; want uid %s gid %s with group %s, not root's", puid, pgid, groups, u.Uid, u.Gid, extra.Gid)
	}
	// The check, as rewritten by the app.
	var ids []string
	proctest.WaitFor(t, 20*time.Second, "the rewritten check to run", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "ids"))
		ids = strings.Fields(string(b))
		return err == nil && len(ids) >= 3
	})
	if ids[0] != u.Uid || ids[1] != u.Gid {
		t.Fatalf("exec check ran as uid %s gid %s; want the instance's uid %s gid %s", ids[0], ids[1], u.Uid, u.Gid)
	}
	if !slices.Contains(ids[2:], extra.Gid) || slices.Contains(ids[2:], "0") {
		t.Fatalf("exec check groups %v; want the user's (with %s), not root's", ids[2:], extra.Gid)
	}
	if _, err := os.Stat(filepath.Join(rootOnly, "pwned")); err == nil {
		t.Fatal("the app's check script wrote into a root-only directory")
	}
}

// TestGroupOverridesPrimaryGroup: with User and Group, the process runs
// with Group as its gid and the user's supplementary groups.
func TestGroupOverridesPrimaryGroup(t *testing.T) {
	u, extra := testUser(t)
	h := start(t, Config{})
	sleep, err := lookPath("sleep", "", DefaultPath)
	if err != nil {
		t.Fatal(err)
	}
	st, err := h.Start(ctxT(t), Spec{ID: "grouped", Command: []string{sleep, "600"}, Dir: "/", User: credUser, Group: credExtra})
	if err != nil {
		t.Fatal(err)
	}
	uid, gid, groups := procIDs(t, st.PID)
	if uid != u.Uid || gid != extra.Gid || !slices.Contains(groups, u.Gid) || !slices.Contains(groups, extra.Gid) || slices.Contains(groups, "0") {
		t.Fatalf("uid %s gid %s groups %v; want uid %s gid %s groups of the user (%s, %s)", uid, gid, groups, u.Uid, extra.Gid, u.Gid, extra.Gid)
	}
}

// TestRefuseRoot: with Config.RefuseRoot, a Spec that would run as uid 0
// is refused before anything starts; one with an unprivileged user runs.
func TestRefuseRoot(t *testing.T) {
	t.Parallel()
	h := start(t, Config{RefuseRoot: true})
	sleep, err := lookPath("sleep", "", DefaultPath)
	if err != nil {
		t.Fatal(err)
	}
	base := Spec{ID: "rooted", Command: []string{sleep, "600"}, Dir: "/"}
	refused := []struct{ name, user string }{{"user root", "root"}, {"uid 0", "0"}}
	if os.Geteuid() == 0 {
		refused = append(refused, struct{ name, user string }{"no user", ""})
	}
	for _, tc := range refused {
		spec := base
		spec.User = tc.user
		_, err := h.Start(ctxT(t), spec)
		if !errors.Is(err, ErrRoot) || !errors.Is(err, ErrInvalidSpec) {
			t.Fatalf("%s: Start() = %v, want ErrRoot and ErrInvalidSpec", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	if l := h.List(); len(l) != 0 {
		t.Fatalf("instances left behind: %+v", l)
	}
	ok := base
	if os.Geteuid() == 0 {
		ok.User = "nobody"
	}
	st, err := h.Start(ctxT(t), ok)
	if err != nil {
		t.Fatalf("Start() as %q = %v", ok.User, err)
	}
	if uid, _, _ := procIDs(t, st.PID); uid == "0" {
		t.Fatalf("runs as uid 0")
	}
}
