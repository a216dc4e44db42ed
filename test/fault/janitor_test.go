package fault

import (
	"time"

	"github.com/visorhq/visor/internal/janitor"
	"github.com/visorhq/visor/internal/proctest"
)

// janitorEnv starts the test binary as the janitor of run <value>: it waits
// for EOF on its stdin, then removes everything of the run (removeRun).
// The janitor is not in any of the run's namespaces, so it does not kill
// itself (internal/janitor says how it outlives the test).
const janitorEnv = "VISOR_FAULT_JANITOR"

// janitorLimit bounds the janitor's work after EOF.
const janitorLimit = 60 * time.Second

// startJanitor starts the janitor of run tag.
func startJanitor(tag string) (*janitor.Janitor, error) {
	return janitor.Start(proctest.Binary(), janitorEnv, tag)
}

// janitorMain is the janitor process: it returns its exit code.
func janitorMain(tag string) int { return janitor.Main(tag, janitorLimit, removeRun) }
