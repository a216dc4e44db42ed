package supervisor

import "errors"

// Sentinel errors; match them with errors.Is.
var (
	// ErrNotFound: no instance with that id.
	ErrNotFound = errors.New("supervisor: instance not found")
	// ErrExists: Start with the id of an instance that is not terminal.
	ErrExists = errors.New("supervisor: instance exists")
	// ErrInvalidSpec: the Spec was rejected before anything was started.
	ErrInvalidSpec = errors.New("supervisor: invalid spec")
	// ErrRoot: Config.RefuseRoot is set and the Spec would run as uid 0.
	// It comes wrapped together with ErrInvalidSpec.
	ErrRoot = errors.New("supervisor: refused to run as root")
	// ErrStopped: Run has returned or is shutting down (or was never
	// started and ctx ended).
	ErrStopped = errors.New("supervisor: stopped")
	// ErrNotRunning: the instance has no live process (Signal).
	ErrNotRunning = errors.New("supervisor: instance has no process")
	// ErrActive: Remove of an instance that is not terminal.
	ErrActive = errors.New("supervisor: instance is not terminal")
)

// rootError is the error of a Spec refused by Config.RefuseRoot: it is
// both ErrInvalidSpec and ErrRoot.
type rootError string

func (e rootError) Error() string {
	return ErrInvalidSpec.Error() + ": refused to run as root: " + string(e)
}

func (e rootError) Is(target error) bool { return target == ErrInvalidSpec || target == ErrRoot }
