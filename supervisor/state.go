package supervisor

import "fmt"

// State is the lifecycle state of an instance.
type State string

// Lifecycle states. StateExited and StateFailed are terminal.
const (
	// StateStarting: the process was started and has not met the "started"
	// criterion (MinUptime, passing health check) yet.
	StateStarting State = "starting"
	// StateRunning: the process is up and met the started criterion.
	StateRunning State = "running"
	// StateBackoff: the process exited and waits for its restart.
	StateBackoff State = "backoff"
	// StateStopping: a stop was requested; the process group is being killed.
	StateStopping State = "stopping"
	// StateExited: the process ended and will not be restarted.
	StateExited State = "exited"
	// StateFailed: the restart budget is spent or the process could not be
	// started again.
	StateFailed State = "failed"
)

// String returns the state's name.
func (s State) String() string { return string(s) }

// Terminal reports whether s is StateExited or StateFailed.
func (s State) Terminal() bool { return s == StateExited || s == StateFailed }

// transitions lists the legal moves; "" is a new instance.
var transitions = map[State][]State{
	"":            {StateStarting},
	StateStarting: {StateRunning, StateBackoff, StateStopping, StateExited, StateFailed},
	StateRunning:  {StateBackoff, StateStopping, StateExited, StateFailed},
	StateBackoff:  {StateStarting, StateExited, StateFailed},
	StateStopping: {StateExited},
	StateExited:   {StateStarting},
	StateFailed:   {StateStarting},
}

// checkTransition returns an error unless from → to is a legal move.
func checkTransition(from, to State) error {
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("invalid state transition %q to %q", from, to)
}

// Phase is what the kernel says about the process, in the spirit of the
// seed's ProcStat.
type Phase string

// Process phases.
const (
	PhaseRunning   Phase = "running"
	PhaseExited    Phase = "exited"    // exited with a code
	PhaseStopped   Phase = "stopped"   // stopped by SIGSTOP/SIGTSTP
	PhaseSignaled  Phase = "signaled"  // killed by a signal
	PhaseContinued Phase = "continued" // resumed by SIGCONT
	PhaseUnknown   Phase = "unknown"   // the exit status could not be obtained
)

// String returns the phase's name.
func (p Phase) String() string { return string(p) }
