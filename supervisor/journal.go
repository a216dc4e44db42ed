package supervisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// journalName is the state journal's file name under Config.StateDir.
const journalName = "state.jsonl"

// journal is the persisted state of every instance: one append-only file
// of JSON lines, each a whole record (the instance's latest state) or a
// tombstone {"removed": id}. The last line of an id wins. A save is one
// append: no file is created per instance or per save, where a file per
// instance rewritten through a temp file and a rename cost a new inode
// each time, the largest part of a start's own CPU on ext4.
//
// Appends (O_APPEND) are not interleaved with one another, and a write of
// a line of at most a page is not torn by the writer's death; a longer
// line cut short by a crash is the file's last and is skipped on load, so
// that instance falls back to its previous line, and cut off the file
// (else the next append would be glued onto it and lost with it on the
// next load). No fsync: the journal
// must survive the supervisor's process, not the host (after a power loss
// no instance is left to re-adopt).
//
// When the file holds more than twice as many lines as live instances (and
// at least compactMin), it is rewritten with only the latest line of each
// (a temp file and a rename, rare). Per-instance state files of earlier
// versions (<id>.json) are read once when the journal opens, folded into
// it and removed.
type journal struct {
	mu    sync.Mutex
	dir   string
	log   hclog.Logger
	f     *os.File          // append handle; nil until the first write
	lines int               // lines in the file
	live  map[string][]byte // latest line (without newline) of each id
}

// compactMin is the fewest lines worth compacting.
const compactMin = 1024

// journalLine is the shape of a line: a record, or a tombstone.
type journalLine struct {
	record
	Removed string `json:"removed,omitempty"`
}

// openJournal loads the journal in dir (and any legacy state files).
func openJournal(dir string, log hclog.Logger) (*journal, error) {
	j := &journal{dir: dir, log: log, live: map[string][]byte{}}
	if err := j.load(); err != nil {
		return nil, err
	}
	legacy, err := j.loadLegacy()
	if err != nil {
		return nil, err
	}
	if len(legacy) > 0 {
		if err := j.compact(); err != nil {
			return nil, err
		}
		for _, p := range legacy {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				j.log.Warn("remove migrated state file", "file", p, "error", err)
			}
		}
	}
	return j, nil
}

func (j *journal) path() string { return filepath.Join(j.dir, journalName) }

// load reads the journal file, if any, into j.live.
func (j *journal) load() error {
	f, err := os.Open(j.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state journal: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	// read: bytes scanned; lineEnd: just after the last newline.
	var read, lineEnd int64
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		adv, tok, err := bufio.ScanLines(data, atEOF)
		read += int64(adv)
		if adv > 0 && data[adv-1] == '\n' {
			lineEnd = read
		}
		return adv, tok, err
	})
	lastOK := false // the last line is JSON (so, being an object, whole)
	for n := 1; sc.Scan(); n++ {
		j.lines++
		line := sc.Bytes()
		var l journalLine
		err := json.Unmarshal(line, &l)
		lastOK = err == nil
		if err != nil {
			j.log.Warn("skipping unreadable state journal line (cut short by a crash?)", "line", n, "error", err)
			continue
		}
		switch {
		case l.Removed != "":
			delete(j.live, l.Removed)
		case l.Version != recordVersion || l.Spec.ID == "":
			j.log.Warn("skipping state journal line", "line", n, "version", l.Version, "id", l.Spec.ID)
		default:
			j.live[l.Spec.ID] = bytes.Clone(line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read state journal: %w", err)
	}
	if read == lineEnd {
		return nil
	}
	// The last line has no newline: appends would be glued onto it. A
	// whole line (the crash fell between it and its newline) gets its
	// newline; a torn one is cut off, back to the last newline.
	if lastOK {
		return j.appendRaw([]byte{'\n'})
	}
	j.log.Warn("cutting torn last line off the state journal", "offset", lineEnd, "bytes", read-lineEnd)
	if err := os.Truncate(j.path(), lineEnd); err != nil {
		return fmt.Errorf("cut torn state journal line: %w", err)
	}
	j.lines--
	return nil
}

// loadLegacy folds <id>.json state files of earlier versions into j.live
// (the journal's own line wins) and returns their paths.
func (j *journal) loadLegacy() ([]string, error) {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("read state dir: %w", err)
	}
	var paths []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".json") {
			continue
		}
		p := filepath.Join(j.dir, name)
		b, err := os.ReadFile(p)
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
			j.log.Warn("skipping unreadable state file", "file", name, "error", err)
			continue
		}
		paths = append(paths, p)
		if _, ok := j.live[rec.Spec.ID]; !ok {
			line, err := json.Marshal(&rec)
			if err != nil {
				return nil, fmt.Errorf("encode state: %w", err)
			}
			j.live[rec.Spec.ID] = line
		}
	}
	return paths, nil
}

// records returns the live records, sorted by id.
func (j *journal) records() []record {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]record, 0, len(j.live))
	for id, line := range j.live {
		var l journalLine
		if err := json.Unmarshal(line, &l); err != nil {
			j.log.Warn("skipping state record", "instance", id, "error", err)
			continue
		}
		out = append(out, l.record)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Spec.ID < out[b].Spec.ID })
	return out
}

// has reports whether id has a live record.
func (j *journal) has(id string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	_, ok := j.live[id]
	return ok
}

// save appends rec as the latest state of its instance.
func (j *journal) save(rec *record) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.appendLocked(line); err != nil {
		return err
	}
	j.live[rec.Spec.ID] = line
	return j.maybeCompactLocked()
}

// remove appends a tombstone for id, if it has a record.
func (j *journal) remove(id string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.live[id]; !ok {
		return nil
	}
	line := []byte(`{"removed":` + string(mustQuote(id)) + `}`)
	if err := j.appendLocked(line); err != nil {
		return err
	}
	delete(j.live, id)
	return j.maybeCompactLocked()
}

func mustQuote(s string) []byte {
	b, _ := json.Marshal(s) // a string always encodes
	return b
}

// appendLocked writes line and a newline in one append.
func (j *journal) appendLocked(line []byte) error {
	buf := make([]byte, 0, len(line)+1)
	buf = append(append(buf, line...), '\n')
	if err := j.appendRaw(buf); err != nil {
		return err
	}
	j.lines++
	return nil
}

// appendRaw appends b to the journal file in one write, opening the append
// handle if needed; j.mu is held, or j is not shared yet (load).
func (j *journal) appendRaw(b []byte) error {
	if j.f == nil {
		f, err := os.OpenFile(j.path(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("open state journal: %w", err)
		}
		j.f = f
	}
	if _, err := j.f.Write(b); err != nil {
		return fmt.Errorf("write state journal: %w", err)
	}
	return nil
}

func (j *journal) maybeCompactLocked() error {
	if j.lines < compactMin || j.lines <= 2*len(j.live) {
		return nil
	}
	return j.compactLocked()
}

func (j *journal) compact() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.compactLocked()
}

// compactLocked rewrites the journal with the latest line of each live id.
func (j *journal) compactLocked() error {
	ids := make([]string, 0, len(j.live))
	for id := range j.live {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var buf bytes.Buffer
	for _, id := range ids {
		buf.Write(j.live[id])
		buf.WriteByte('\n')
	}
	tmp := j.path() + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("compact state journal: %w", err)
	}
	if err := os.Rename(tmp, j.path()); err != nil {
		return fmt.Errorf("compact state journal: %w", err)
	}
	j.closeLocked() // reopened on the next append: the old handle is the old file
	j.lines = len(ids)
	return nil
}

// close closes the append handle; a later write opens it again.
func (j *journal) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.closeLocked()
}

func (j *journal) closeLocked() {
	if j.f != nil {
		_ = j.f.Close()
		j.f = nil
	}
}
