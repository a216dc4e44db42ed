package supervisor

import "time"

// recordVersion is the version of the state record format.
const recordVersion = 1

// record is the persisted state of one instance, written to the state
// journal (journal.go) at every transition. It is what Restore needs after
// the supervisor's process was killed.
type record struct {
	Version    int            `json:"version"`
	Spec       Spec           `json:"spec"`
	State      State          `json:"state"`
	Since      time.Time      `json:"since"`
	Phase      Phase          `json:"phase,omitempty"`
	PID        int            `json:"pid,omitempty"`
	StartTicks uint64         `json:"start_ticks,omitempty"` // /proc/<pid>/stat field 22
	StartTime  time.Time      `json:"start_time"`
	Restarts   map[string]int `json:"restarts,omitempty"`
	ExitCode   int            `json:"exit_code"`
	Signal     string         `json:"signal,omitempty"`
	Reason     string         `json:"reason,omitempty"`
}

// save persists rec in the state journal.
func (s *Supervisor) save(rec *record) error { return s.journal.save(rec) }

// loadAll returns every persisted record.
func (s *Supervisor) loadAll() ([]record, error) { return s.journal.records(), nil }

// removeState forgets the persisted record of id.
func (s *Supervisor) removeState(id string) error { return s.journal.remove(id) }
