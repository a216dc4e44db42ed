package registry

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Operations wrap them with context naming the entity, so
// callers branch with errors.Is and print the wrapped error.
var (
	// ErrNotFound reports that an app, revision, process type, ticket,
	// instance or host does not exist.
	ErrNotFound = errors.New("registry: not found")
	// ErrExists reports that a record to be created already exists.
	ErrExists = errors.New("registry: already exists")
	// ErrInvalid reports input that fails validation; nothing was written.
	ErrInvalid = errors.New("registry: invalid input")
	// ErrClaimed reports that a ticket is already claimed by a host.
	ErrClaimed = errors.New("registry: ticket already claimed")
	// ErrTicketChanged reports that a ticket changed since it was read.
	ErrTicketChanged = errors.New("registry: ticket changed since read")
	// ErrTicketDone reports that a ticket was completed or cancelled.
	ErrTicketDone = errors.New("registry: ticket done or cancelled")
	// ErrNotHolder reports that the session does not hold the claim or the
	// instance it tried to change.
	ErrNotHolder = errors.New("registry: not the holder")
	// ErrLeaseLost reports that the session's lease expired or was revoked.
	ErrLeaseLost = errors.New("registry: lease lost")
	// ErrConflict reports that an optimistic transaction kept conflicting
	// with concurrent writers until its retry budget was spent.
	ErrConflict = errors.New("registry: too many conflicting writes")
	// ErrInUse reports that an app, revision or process type still has
	// live instances.
	ErrInUse = errors.New("registry: in use by live instances")
	// ErrCorrupt reports a stored value that does not decode (for example
	// one written into etcd by hand). The wrapped error names the key.
	ErrCorrupt = errors.New("registry: stored value does not decode")
	// ErrTransition reports an instance state change that the lifecycle
	// does not allow.
	ErrTransition = errors.New("registry: invalid state transition")
	// ErrCompacted reports that a watch could not resume from the requested
	// revision because etcd compacted it; events in between are gone.
	ErrCompacted = errors.New("registry: revision compacted")
)

// errPrefix starts every error message of this package, once.
const errPrefix = "registry: "

// errorf is fmt.Errorf for the messages of this package's operations,
// which start with errPrefix: an error among args whose own message starts
// with it too (a sentinel, or what an inner call returned) is printed
// without it, so "registry: complete ticket 01: registry: ticket done or
// cancelled (registry: not found)" reads "registry: complete ticket 01:
// ticket done or cancelled (not found)". errors.Is and errors.As see the
// wrapped errors as fmt.Errorf would.
func errorf(format string, args ...any) error {
	for i, a := range args {
		if err, ok := a.(error); ok {
			args[i] = unprefixed{err}
		}
	}
	return fmt.Errorf(format, args...)
}

// unprefixed prints err without its leading errPrefix, for a message that
// already starts with it; it unwraps to err.
type unprefixed struct{ err error }

func (u unprefixed) Error() string { return strings.TrimPrefix(u.err.Error(), errPrefix) }

func (u unprefixed) Unwrap() error { return u.err }
