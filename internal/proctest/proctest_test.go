package proctest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	Main()
	os.Exit(m.Run())
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	err := Exec("exit", "7").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("Run() = %v, want exit 7", err)
	}
}

func TestPrintLines(t *testing.T) {
	t.Parallel()
	out, err := Exec("print-lines", "3", "20").Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 || len(lines[0]) != 20 || !strings.HasPrefix(lines[2], "line 00002") {
		t.Fatalf("output %q", out)
	}
}

func TestIgnoreSigterm(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "ready")
	cmd := Exec("ignore-sigterm", file)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if got := ReadFile(t, 10*time.Second, file); got != strconv.Itoa(cmd.Process.Pid) {
		t.Fatalf("ready file %q", got)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !Alive(cmd.Process.Pid) {
		t.Fatal("process died of SIGTERM")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if Alive(cmd.Process.Pid) {
		t.Fatal("process alive after kill and wait")
	}
}
