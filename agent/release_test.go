package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/registry"
)

// testUser is a real unprivileged user (created for the test if missing,
// and then deleted by its cleanup).
type testUser struct {
	name     string
	uid, gid int
}

func ensureUser(t *testing.T, name string) testUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates users and hands releases over to them")
	}
	u, err := user.Lookup(name)
	if err != nil {
		out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd %s: %v: %s", name, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
				t.Errorf("userdel %s: %v: %s", name, err, out)
			}
		})
		if u, err = user.Lookup(name); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 {
		t.Fatalf("user %s is root", name)
	}
	return testUser{name: name, uid: uid, gid: gid}
}

// asUser runs a shell script as u (its uid and primary group only) and
// returns its error.
func asUser(u testUser, script string) error {
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// reachableTempDir returns a fresh temporary directory that every user may
// search down to (t.TempDir's parent is 0700), as /var/lib/visor is.
func reachableTempDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for p := d; strings.HasPrefix(p, os.TempDir()+string(filepath.Separator)); p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, st.Mode().Perm()|0o001); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// userArtifact writes a tar.gz with an executable run script, a data file
// and a directory, and returns its path and sha256.
func userArtifact(t *testing.T) (string, string) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range []struct {
		name string
		mode int64
		body string
	}{
		{"bin/", 0o755, ""},
		{"data.txt", 0o644, "some app data\n"},
		{"run", 0o755, "#!/bin/sh\ntest -r data.txt || exit 3\nexec sleep 300\n"},
	} {
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag = tar.TypeDir
		}
		must(t, tw.WriteHeader(hdr))
		_, err := tw.Write([]byte(e.body))
		must(t, err)
	}
	must(t, tw.Close())
	must(t, zw.Close())
	p := filepath.Join(t.TempDir(), "app.tar.gz")
	must(t, os.WriteFile(p, buf.Bytes(), 0o644))
	sum := sha256.Sum256(buf.Bytes())
	return p, hex.EncodeToString(sum[:])
}

// TestUserOwnedRelease: a release for a non-root instance is owned by root
// and the instance's group, readable and searchable by that group and by
// nobody else, writable by none of them; root's release of the same
// artifact and another group's release stay closed to the user.
func TestUserOwnedRelease(t *testing.T) {
	u1 := ensureUser(t, "visor-art-u1")
	u2 := ensureUser(t, "visor-art-u2")
	base := reachableTempDir(t)
	c := newArtifactCache(filepath.Join(base, "artifacts"), artifactLimitsOf(Config{}.withDefaults()), nil)
	must(t, c.prepareDirs(base))
	path, sum := userArtifact(t)
	ctx := context.Background()
	dir := func(gid int) string {
		d, release, err := c.Dir(ctx, "file://"+path, sum, gid)
		must(t, err)
		release()
		return d
	}
	rootRel, rel1, rel2 := dir(-1), dir(u1.gid), dir(u2.gid)

	for _, tc := range []struct {
		path string
		gid  int
		mode os.FileMode
	}{
		{rootRel, 0, 0o700},
		{rel1, u1.gid, 0o750},
		{filepath.Join(rel1, "bin"), u1.gid, 0o750},
		{filepath.Join(rel1, "data.txt"), u1.gid, 0o640},
		{filepath.Join(rel1, "run"), u1.gid, 0o750},
		{rel2, u2.gid, 0o750},
	} {
		st, err := os.Stat(tc.path)
		must(t, err)
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != 0 || int(sys.Gid) != tc.gid || st.Mode().Perm() != tc.mode {
			t.Errorf("%s: owner %d:%d mode %o, want 0:%d %o", tc.path, sys.Uid, sys.Gid, st.Mode().Perm(), tc.gid, tc.mode)
		}
	}
	if err := asUser(u1, "test -r "+rel1+"/data.txt && test -x "+rel1+"/run && cd "+rel1+" && ls bin"); err != nil {
		t.Errorf("u1 cannot use its own release: %v", err)
	}
	for what, script := range map[string]string{
		"read root's release":     "cat " + rootRel + "/data.txt",
		"read u2's release":       "cat " + rel2 + "/data.txt",
		"write into its release":  "touch " + rel1 + "/new",
		"change its release file": "echo x >> " + rel1 + "/data.txt",
		"list the releases":       "ls " + filepath.Dir(rel1),
		"read the cached blobs":   "ls " + filepath.Join(base, "artifacts", "blobs"),
	} {
		if err := asUser(u1, script); err == nil {
			t.Errorf("u1 could %s", what)
		}
	}
}

// TestAgentRunsArtifactAsUser: an artifact revision whose process type
// sets user starts and runs as that user, in its own release (it used to
// fail with "permission denied" on the 0700 root release).
func TestAgentRunsArtifactAsUser(t *testing.T) {
	u := ensureUser(t, "visor-art-u1")
	f := newFixture(t)
	data := reachableTempDir(t)
	a := f.startAgent(t, "host-a", data, func(c *Config) { c.StopOnExit = true })
	path, sum := userArtifact(t)
	_, err := f.reg.RegisterApp(f.ctx, registry.App{Name: "userapp"})
	must(t, err)
	_, err = f.reg.RegisterRevision(f.ctx, registry.Revision{App: "userapp", Name: "v2", ArtifactURL: "file://" + path, SHA256: sum})
	must(t, err)
	_, err = f.reg.SetProcType(f.ctx, registry.ProcType{App: "userapp", Name: "web", Command: "./run", User: u.name,
		StopTimeout: registry.Duration(2 * time.Second), Restart: registry.RestartPolicy{Policy: "never"}})
	must(t, err)
	_, err = f.reg.Scale(f.ctx, "userapp", "v2", "web", 1)
	must(t, err)
	var in registry.Instance
	for _, only := range f.waitRunning(t, "userapp", 1) {
		in = only
	}
	t.Cleanup(func() { _ = syscall.Kill(in.PID, syscall.SIGKILL) })
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.PID))
	must(t, err)
	var uidLine string
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "Uid:") {
			uidLine = l
		}
	}
	if f := strings.Fields(uidLine); len(f) < 2 || f[1] != strconv.Itoa(u.uid) {
		t.Errorf("instance runs with %q, want uid %d", uidLine, u.uid)
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", in.PID))
	must(t, err)
	if want := filepath.Join(data, "artifacts", "releases", sum+"-g"+strconv.Itoa(u.gid)); cwd != want {
		t.Errorf("instance works in %s, want %s", cwd, want)
	}
	// The script checked it can read its data (exit 3 otherwise): still alive.
	proctest.WaitFor(t, 5*time.Second, "the instance alive", func() bool { return proctest.Alive(in.PID) })
	if _, err := os.Stat(filepath.Join(data, "artifacts", "releases", sum)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a root release was unpacked for a user's instance: %v", err)
	}
	// A prune a year from now keeps the release the instance uses (the
	// blob, only needed to unpack again, goes).
	res, err := a.artifacts.prune(time.Now().Add(365*24*time.Hour), a.releasesInUse())
	must(t, err)
	if _, err := os.Stat(filepath.Join(cwd, "run")); err != nil || res.Removed != 1 {
		t.Errorf("prune removed %d entries; release in use: %v", res.Removed, err)
	}
}

// TestArtifactCachePrune: entries unused past the max age go, then the
// least recently used until the cache fits its max size; releases in use
// or pinned by a start stay, and no release goes when the ones in use are
// not all known; leftovers of interrupted fetches go once stale.
func TestArtifactCachePrune(t *testing.T) {
	ctx := context.Background()
	c := newTestCache(t, func(c *Config) {
		c.ArtifactCacheMaxAge = time.Hour
		c.ArtifactCacheMaxBytes = 1 << 40
		c.ArtifactTimeout = time.Minute
	})
	now := time.Now()
	type art struct{ url, sum, rel, blob string }
	var arts []art
	for i := range 4 {
		p, sum := makeArtifact(t, map[string]string{"f": strings.Repeat("x", 1000*(i+1))})
		rel, release, err := c.Dir(ctx, "file://"+p, sum, -1)
		must(t, err)
		release()
		arts = append(arts, art{"file://" + p, sum, rel, filepath.Join(c.dir, "blobs", sum+".tar.gz")})
	}
	age := func(a art, d time.Duration) {
		t.Helper()
		at := now.Add(-d)
		must(t, os.Chtimes(filepath.Join(a.rel, releaseMarker), at, at))
		must(t, os.Chtimes(a.blob, at, at))
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	// 0: expired, unused. 1: expired, in use. 2: expired, pinned by a
	// start under way. 3: fresh.
	age(arts[0], 3*time.Hour)
	age(arts[1], 3*time.Hour)
	age(arts[2], 3*time.Hour)
	age(arts[3], time.Minute)
	c.mu.Lock()
	c.pins[arts[2].rel]++
	c.mu.Unlock()
	stale := filepath.Join(c.dir, "releases", ".unpack-stale")
	fresh := filepath.Join(c.dir, "blobs", ".fetch-fresh")
	must(t, os.Mkdir(stale, 0o700))
	must(t, os.WriteFile(fresh, nil, 0o600))
	old := now.Add(-time.Hour)
	must(t, os.Chtimes(stale, old, old))

	// Releases in use not all known: no release goes, blobs may.
	res, err := c.prune(now, nil)
	must(t, err)
	for i, a := range arts {
		if !exists(a.rel) {
			t.Fatalf("release %d pruned while the releases in use were unknown", i)
		}
	}
	if exists(arts[0].blob) || !exists(arts[3].blob) {
		t.Errorf("blobs after the first pass: 0 %v (want gone), 3 %v (want kept)", exists(arts[0].blob), exists(arts[3].blob))
	}

	res, err = c.prune(now, map[string]bool{arts[1].rel: true})
	must(t, err)
	if exists(arts[0].rel) {
		t.Error("an expired unused release was kept")
	}
	for i, a := range arts[1:] {
		if !exists(a.rel) {
			t.Errorf("release %d (in use, pinned or fresh) was pruned", i+1)
		}
	}
	if exists(stale) || !exists(fresh) {
		t.Errorf("leftovers: stale %v (want gone), fresh %v (want kept)", exists(stale), exists(fresh))
	}
	t.Logf("age pass: %+v", res)

	// Size: with room for about one release, the least recently used
	// unused ones go; in use and pinned ones stay even over the size.
	c.lim.cacheMaxBytes = 1500
	c.lim.cacheMaxAge = 1000 * time.Hour
	res, err = c.prune(now, map[string]bool{arts[1].rel: true})
	must(t, err)
	if exists(arts[3].rel) || !exists(arts[1].rel) || !exists(arts[2].rel) {
		t.Errorf("size pass: releases 1 %v 2 %v 3 %v; want 1 and 2 kept, 3 gone",
			exists(arts[1].rel), exists(arts[2].rel), exists(arts[3].rel))
	}
	if res.Kept > 0 && res.Removed == 0 {
		t.Errorf("size pass removed nothing: %+v", res)
	}

	// A pruned artifact is fetched again when needed.
	rel, release, err := c.Dir(ctx, arts[0].url, arts[0].sum, -1)
	must(t, err)
	release()
	if rel != arts[0].rel || !exists(filepath.Join(rel, "f")) {
		t.Fatalf("refetch: %s", rel)
	}
}
