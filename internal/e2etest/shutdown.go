package e2etest

import (
	"time"

	"github.com/visorhq/visor/agent"
)

// AgentExitWait is how long a test waits for a visor agent process to exit
// after SIGTERM, before scaling with testtime.Scaled: the agent's own bound
// on its shutdown work (agent.ShutdownTimeout) plus a margin for its loops
// to stop and the process to exit.
const AgentExitWait = agent.ShutdownTimeout + 5*time.Second
