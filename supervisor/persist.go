package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// recordVersion is the version of the state file format.
const recordVersion = 1

// record is the persisted state of one instance, one JSON file per instance
// under Config.StateDir, written at every transition (temp file + rename).
// It is what Restore needs after the supervisor's process was killed.
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

func (s *Supervisor) statePath(id string) string {
	return filepath.Join(s.cfg.StateDir, id+".json")
}

// save writes rec atomically. No fsync: the file must survive the
// supervisor's process, not the host; after a power loss no instance is
// left to re-adopt anyway.
func (s *Supervisor) save(rec *record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	path := s.statePath(rec.Spec.ID)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// loadAll reads every state file; unreadable ones are logged and skipped.
func (s *Supervisor) loadAll() ([]record, error) {
	entries, err := os.ReadDir(s.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("read state dir: %w", err)
	}
	var recs []record
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		var rec record
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err == nil && (rec.Version != recordVersion || rec.Spec.ID+".json" != name) {
			err = fmt.Errorf("version %d or id %q does not match", rec.Version, rec.Spec.ID)
		}
		if err != nil {
			s.log.Warn("skipping unreadable state file", "file", name, "error", err)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

func (s *Supervisor) removeState(id string) error {
	err := os.Remove(s.statePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
