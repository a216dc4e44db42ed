package janitor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/testtime"
)

const testEnv = "VISOR_JANITOR_TEST"

// TestMain runs the test binary as a janitor when testEnv names a run: the
// removal writes a marker file named by the tag, or fails for tag "fail".
func TestMain(m *testing.M) {
	if tag := os.Getenv(testEnv); tag != "" {
		os.Exit(Main(tag, time.Minute, func(ctx context.Context, tag string) error {
			if filepath.Base(tag) == "fail" {
				return errors.New("removal failed")
			}
			return os.WriteFile(tag, []byte("removed"), 0o600)
		}))
	}
	os.Exit(m.Run())
}

func TestJanitorRemovesAfterEOF(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "run")
	j, err := Start(os.Args[0], testEnv, marker)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the janitor removed the run before its stdin was closed")
	}
	if err := j.Finish(testtime.Scaled(30 * time.Second)); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if b, err := os.ReadFile(marker); err != nil || string(b) != "removed" {
		t.Fatalf("after Finish the run was not removed: %q, %v", b, err)
	}
}

func TestJanitorReportsRemovalError(t *testing.T) {
	j, err := Start(os.Args[0], testEnv, filepath.Join(t.TempDir(), "fail"))
	if err != nil {
		t.Fatal(err)
	}
	err = j.Finish(testtime.Scaled(30 * time.Second))
	if err == nil || !strings.Contains(err.Error(), "removal failed") {
		t.Fatalf("Finish = %v, want the janitor's error with its stderr", err)
	}
}
