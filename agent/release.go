package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// releaseGroup returns the group a release is handed to for a process type
// that runs as userName and groupName (resolved as the supervisor does:
// names or numeric ids, the user's primary group when groupName is
// empty), or -1 for a release root keeps to itself: no user, user root,
// or an agent that is not root (which can neither hand files over nor run
// processes as another user, so its instances run as itself).
func releaseGroup(userName, groupName string) (int, error) {
	if userName == "" || os.Geteuid() != 0 {
		return -1, nil
	}
	u, err := user.Lookup(userName)
	if err != nil {
		if _, nerr := strconv.Atoi(userName); nerr == nil {
			u, err = user.LookupId(userName)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("user %q: %w", userName, err)
	}
	if u.Uid == "0" {
		return -1, nil
	}
	gid := u.Gid
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			if _, nerr := strconv.Atoi(groupName); nerr == nil {
				g, err = user.LookupGroupId(groupName)
			}
		}
		if err != nil {
			return 0, fmt.Errorf("group %q: %w", groupName, err)
		}
		gid = g.Gid
	}
	n, err := strconv.Atoi(gid)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("group id %q of user %q is not a number", gid, userName)
	}
	return n, nil
}

// prepareDirs creates the cache's directories and makes the path down to
// the releases searchable (not listable) by every user: dataDir,
// <dir> and <dir>/releases get the others' x bit. An instance running as
// another user must reach its release; what it may open there is up to
// each release's own mode (0700 root, or root:gid 0750), and every other
// entry of dataDir keeps its own mode (instances/ 0700, logs/ 0750, the
// lease file 0640). The ancestors of dataDir must be searchable too (the
// default /var/lib/visor is); the agent does not change them.
func (c *artifactCache) prepareDirs(dataDir string) error {
	for _, d := range []string{filepath.Join(c.dir, "blobs"), filepath.Join(c.dir, "releases")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	for _, d := range []string{dataDir, c.dir, filepath.Join(c.dir, "releases")} {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if m := st.Mode().Perm(); m&0o001 == 0 {
			if err := os.Chmod(d, m|0o001); err != nil {
				return err
			}
		}
	}
	return nil
}

// ready reports whether the release of artifact sum for group gid is in
// the cache.
func (c *artifactCache) ready(sum string, gid int) bool {
	sum, err := validSum(sum)
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(c.releasePath(sum, gid), releaseMarker))
	return err == nil
}

// cacheEntry is a blob or a release, for pruning.
type cacheEntry struct {
	path string
	size int64
	used time.Time // last use
}

// pruneResult says what one prune pass did.
type pruneResult struct {
	Removed int   // blobs and releases removed
	Freed   int64 // their bytes
	Kept    int64 // bytes left in the cache
}

// prune removes cache entries (blobs and releases) unused for longer than
// the cache's max age, then, while the cache is larger than its max size,
// the least recently used ones. It never removes a release in inUse (the
// working directories of the instances the supervisor has), nor one being
// handed to a start (pinned), nor any release at all when inUse is nil
// (the directories in use are not all known). A blob is only needed to
// unpack a release (again), so it goes by age and size alone, unless a
// flight is using it. Leftovers of fetches and unpackings that ended
// without cleaning up (an agent killed mid-way) are removed once older
// than the fetch timeout.
func (c *artifactCache) prune(now time.Time, inUse map[string]bool) (pruneResult, error) {
	var res pruneResult
	var entries []cacheEntry
	var total int64
	stale := now.Add(-c.lim.timeout - time.Minute)
	blobs, err := os.ReadDir(filepath.Join(c.dir, "blobs"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, err
	}
	for _, d := range blobs {
		p := filepath.Join(c.dir, "blobs", d.Name())
		info, err := d.Info()
		if err != nil {
			continue
		}
		if strings.HasPrefix(d.Name(), ".") {
			if info.ModTime().Before(stale) {
				_ = os.Remove(p)
			}
			continue
		}
		total += info.Size()
		entries = append(entries, cacheEntry{path: p, size: info.Size(), used: info.ModTime()})
	}
	rels, err := os.ReadDir(filepath.Join(c.dir, "releases"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, err
	}
	for _, d := range rels {
		p := filepath.Join(c.dir, "releases", d.Name())
		if strings.HasPrefix(d.Name(), ".") {
			if info, err := d.Info(); err == nil && info.ModTime().Before(stale) {
				_ = os.RemoveAll(p)
			}
			continue
		}
		marker := filepath.Join(p, releaseMarker)
		info, err := os.Stat(marker)
		if err != nil {
			continue // not a release of ours
		}
		size := releaseSize(p, marker)
		total += size
		if inUse == nil || inUse[p] {
			continue
		}
		entries = append(entries, cacheEntry{path: p, size: size, used: info.ModTime()})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].used.Before(entries[j].used) })
	for _, e := range entries {
		expired := now.Sub(e.used) > c.lim.cacheMaxAge
		if !expired && total <= c.lim.cacheMaxBytes {
			continue
		}
		if !c.remove(e.path) {
			continue
		}
		total -= e.size
		res.Removed++
		res.Freed += e.size
		c.log.Info("artifact cache: removed", "path", e.path, "bytes", e.size,
			"unused_for", now.Sub(e.used).Round(time.Second), "expired", expired)
	}
	res.Kept = total
	return res, nil
}

// releaseSize reads the size a release's marker records, or sums its files
// (a release unpacked before markers held sizes).
func releaseSize(dir, marker string) int64 {
	if b, err := os.ReadFile(marker); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			return n
		}
	}
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// remove deletes a cache entry unless it is pinned. A release is first
// renamed out of the way (under the lock Dir takes to find and pin one),
// so no start ever sees it half removed.
func (c *artifactCache) remove(path string) bool {
	c.mu.Lock()
	if c.pins[path] > 0 {
		c.mu.Unlock()
		return false
	}
	if filepath.Base(filepath.Dir(path)) == "blobs" {
		err := os.Remove(path)
		c.mu.Unlock()
		return err == nil
	}
	gone := filepath.Join(filepath.Dir(path), ".prune-"+filepath.Base(path))
	err := os.Rename(path, gone)
	c.mu.Unlock()
	if err != nil {
		return false
	}
	_ = os.RemoveAll(gone)
	return true
}

// releasesInUse returns the working directories of the instances the
// supervisor has (any state: a stopped one may be restarted), or nil if
// one of them does not record it (started by an agent before metaDir).
func (a *Agent) releasesInUse() map[string]bool {
	in := map[string]bool{}
	for _, st := range a.sup.List() {
		d, ok := st.Meta[metaDir]
		if !ok {
			return nil
		}
		in[d] = true
	}
	return in
}

// pruneLoop prunes the artifact cache every artifactPruneInterval and soon
// after a new artifact entered it, until ctx ends.
func (a *Agent) pruneLoop(ctx context.Context) {
	timer := time.NewTimer(time.Minute)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-a.artifacts.kick:
		}
		res, err := a.artifacts.prune(time.Now(), a.releasesInUse())
		if err != nil {
			a.log.Warn("artifact cache: prune", "error", err)
		} else if res.Removed > 0 {
			a.log.Info("artifact cache pruned", "removed", res.Removed, "freed_bytes", res.Freed, "kept_bytes", res.Kept)
		}
		resetTimer(timer, artifactPruneInterval)
	}
}
