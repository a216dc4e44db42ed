package e2etest

import (
	"os"
	"os/exec"
	"testing"
)

func TestWorkloadsFindsTaggedProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	cmd.Env = append(os.Environ(), "VISOR_E2E=unit-run", "VISOR_INSTANCE=demo-web-1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	got := Workloads("unit-run")
	if len(got) != 1 || len(got["demo-web-1"]) != 1 || got["demo-web-1"][0] != cmd.Process.Pid {
		t.Fatalf("Workloads = %v, want demo-web-1 -> [%d]", got, cmd.Process.Pid)
	}
	if other := Workloads("another-run"); len(other) != 0 {
		t.Fatalf("Workloads(another-run) = %v", other)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if got := Workloads("unit-run"); len(got) != 0 {
		t.Fatalf("Workloads after kill and wait = %v", got)
	}
}
