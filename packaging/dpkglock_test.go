package packaging_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

// dpkgLockWait bounds, before scaling, how long the package test waits for
// another process (apt, unattended-upgrades, another run of this test) to
// release dpkg's lock.
const dpkgLockWait = 5 * time.Minute

// errDpkgLocked means dpkg's lock stayed held for the whole bound.
var errDpkgLocked = errors.New("dpkg's lock is held by another process")

// dpkgRunner runs dpkg, waiting while another process holds its lock.
type dpkgRunner struct {
	bin   string        // dpkg
	locks []string      // the lock files dpkg takes (fcntl write locks)
	wait  time.Duration // the bound on waiting for them, already scaled
}

// systemDpkg is the machine's dpkg with its frontend and database locks.
func systemDpkg() dpkgRunner {
	return dpkgRunner{
		bin:   "dpkg",
		locks: []string{"/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"},
		wait:  testtime.Scaled(dpkgLockWait),
	}
}

// run runs dpkg with args (env added to the environment) in /. dpkg fails
// at once, changing nothing, when another process holds its lock; run then
// waits until the lock files are free and runs it again, until the bound
// passes: then it fails with errDpkgLocked naming the holder.
func (d dpkgRunner) run(ctx context.Context, env []string, args ...string) (string, error) {
	bound := time.NewTimer(d.wait)
	defer bound.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		cmd := exec.CommandContext(ctx, d.bin, args...)
		cmd.Dir = "/"
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "locked by another process") {
			if err != nil {
				err = fmt.Errorf("dpkg %s: %w\n%s", strings.Join(args, " "), err, out)
			}
			return string(out), err
		}
		// Wait at least one tick, then until no lock file is held.
		for first := true; ; first = false {
			holder, herr := d.holder()
			if herr != nil {
				return string(out), fmt.Errorf("dpkg %s: check its lock: %w", strings.Join(args, " "), herr)
			}
			if holder == "" && !first {
				break
			}
			if holder == "" {
				holder = "a process that has let go since"
			}
			select {
			case <-ctx.Done():
				return string(out), ctx.Err()
			case <-bound.C:
				return string(out), fmt.Errorf("dpkg %s: %w (%s) for over %v; let it finish and run the test again",
					strings.Join(args, " "), errDpkgLocked, holder, d.wait)
			case <-tick.C:
			}
		}
	}
}

// holder describes the process holding one of d's lock files ("" if none).
func (d dpkgRunner) holder() (string, error) {
	for _, p := range d.locks {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		lk := syscall.Flock_t{Type: syscall.F_WRLCK}
		err = syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		if lk.Type == syscall.F_UNLCK {
			continue
		}
		who := fmt.Sprintf("%s held by pid %d", p, lk.Pid)
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", lk.Pid)); err == nil && len(b) > 0 {
			who += " (" + strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " ")) + ")"
		}
		return who, nil
	}
	return "", nil
}

// mustDpkg runs dpkg through the system runner and fails the test on error.
func mustDpkg(t *testing.T, ctx context.Context, env []string, args ...string) string {
	t.Helper()
	out, err := systemDpkg().run(ctx, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// lockHolderEnv makes the test binary hold an fcntl write lock on the file
// it names, with a marker file beside it, until its stdin closes.
const lockHolderEnv = "VISOR_PACKAGING_HOLD_LOCK"

func TestMain(m *testing.M) {
	if p := os.Getenv(lockHolderEnv); p != "" {
		os.Exit(holdLock(p))
	}
	os.Exit(m.Run())
}

func holdLock(path string) int {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.WriteFile(path+".held", nil, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("held")
	io.Copy(io.Discard, os.Stdin)
	os.Remove(path + ".held") // before the lock goes with the process
	return 0
}

// TestDpkgRunnerWaitsForLock runs a stand-in dpkg that fails like dpkg
// while the lock is held: the runner waits for the holder to let go and
// runs it again; with the holder never letting go it fails at its bound,
// naming the holder.
func TestDpkgRunnerWaitsForLock(t *testing.T) {
	dir := t.TempDir()
	lock := filepath.Join(dir, "lock-frontend")
	runs := filepath.Join(dir, "runs")
	fake := filepath.Join(dir, "dpkg")
	script := fmt.Sprintf(`#!/bin/sh
echo run >> %[1]q
if [ -e %[2]q ]; then
	echo "dpkg: error: dpkg frontend lock was locked by another process with pid 1" >&2
	exit 2
fi
echo "installed $*"
`, runs, lock+".held")
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	hold := func(t *testing.T) (pid int, release func()) {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), lockHolderEnv+"="+lock)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		released := false
		release = func() {
			if !released {
				released = true
				stdin.Close()
				cmd.Wait()
			}
		}
		t.Cleanup(release)
		if l, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || l != "held\n" {
			t.Fatalf("lock holder said %q, %v", l, err)
		}
		return cmd.Process.Pid, release
	}
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(time.Minute))
	defer cancel()

	t.Run("waits", func(t *testing.T) {
		os.Remove(runs)
		_, release := hold(t)
		d := dpkgRunner{bin: fake, locks: []string{lock}, wait: testtime.Scaled(time.Minute)}
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := d.run(ctx, nil, "-i", "x.deb")
			done <- result{out, err}
		}()
		// The runner has met the lock once it ran dpkg; then let go.
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if b, _ := os.ReadFile(runs); len(b) > 0 {
				break
			}
			select {
			case r := <-done:
				t.Fatalf("run returned while the lock was held: %q, %v", r.out, r.err)
			case <-ctx.Done():
				t.Fatal("the runner never ran dpkg")
			case <-tick.C:
			}
		}
		release()
		r := <-done
		if r.err != nil || r.out != "installed -i x.deb\n" {
			t.Fatalf("run = %q, %v; want the second run's output", r.out, r.err)
		}
		if b, _ := os.ReadFile(runs); strings.Count(string(b), "run") < 2 {
			t.Fatalf("dpkg ran %d times, want a failed run and a retry", strings.Count(string(b), "run"))
		}
	})
	t.Run("bound", func(t *testing.T) {
		pid, _ := hold(t)
		d := dpkgRunner{bin: fake, locks: []string{lock}, wait: 300 * time.Millisecond}
		_, err := d.run(ctx, nil, "-i", "x.deb")
		if !errors.Is(err, errDpkgLocked) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", pid)) {
			t.Fatalf("run with the lock held past the bound = %v; want errDpkgLocked naming pid %d", err, pid)
		}
	})
	t.Run("other failure", func(t *testing.T) {
		d := dpkgRunner{bin: "false", locks: []string{lock}, wait: testtime.Scaled(time.Minute)}
		if _, err := d.run(ctx, nil, "-i", "x.deb"); err == nil || errors.Is(err, errDpkgLocked) {
			t.Fatalf("run of a failing dpkg = %v, want its error at once", err)
		}
	})
}
