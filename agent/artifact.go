package agent

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sync/singleflight"
)

// ErrArtifact marks a revision whose artifact cannot be fetched, verified
// or unpacked. Tickets failing with it are released with the reason so
// another host may try (an unreachable URL may be reachable from there).
var ErrArtifact = errors.New("agent: artifact")

// maxArtifactBytes bounds a downloaded artifact (and its unpacked size), so a
// wrong URL cannot fill the disk.
const maxArtifactBytes = 2 << 30

// artifactCache fetches revision artifacts into a content-addressed cache
// (<dir>/blobs/<sha256>.tar.gz), checks their sha256, and unpacks each once
// into <dir>/releases/<sha256>/, which instances of that revision share as
// their working directory (read-mostly; an app that writes there shares it).
type artifactCache struct {
	dir    string
	client *http.Client
	group  singleflight.Group
}

func newArtifactCache(dir string) *artifactCache {
	return &artifactCache{dir: dir, client: &http.Client{}}
}

// Dir returns the unpacked release directory of the artifact at rawURL with
// the given sha256, fetching and unpacking it first if needed. Concurrent
// calls for one artifact share one fetch.
func (c *artifactCache) Dir(ctx context.Context, rawURL, sum string) (string, error) {
	sum = strings.ToLower(sum)
	if len(sum) != 64 {
		return "", fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrArtifact, sum)
	}
	if _, err := hex.DecodeString(sum); err != nil {
		return "", fmt.Errorf("%w: sha256 %q is not hex", ErrArtifact, sum)
	}
	rel := filepath.Join(c.dir, "releases", sum)
	if _, err := os.Stat(filepath.Join(rel, ".visor-unpacked")); err == nil {
		return rel, nil
	}
	// Keyed by URL too: two URLs claiming one digest must each be checked.
	v, err, _ := c.group.Do(sum+" "+rawURL, func() (any, error) {
		if _, err := os.Stat(filepath.Join(rel, ".visor-unpacked")); err == nil {
			return rel, nil
		}
		blob, err := c.fetch(ctx, rawURL, sum)
		if err != nil {
			return "", err
		}
		if err := unpack(blob, rel); err != nil {
			return "", err
		}
		return rel, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// fetch downloads (or copies) the artifact into the blob cache, verifying
// its sha256 before it becomes visible under its final name.
func (c *artifactCache) fetch(ctx context.Context, rawURL, sum string) (string, error) {
	blobs := filepath.Join(c.dir, "blobs")
	final := filepath.Join(blobs, sum+".tar.gz")
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(blobs, 0o750); err != nil {
		return "", fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("%w: url %q: %v", ErrArtifact, rawURL, err)
	}
	var src io.ReadCloser
	switch u.Scheme {
	case "file":
		f, err := os.Open(u.Path)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrArtifact, err)
		}
		src = f
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrArtifact, err)
		}
		resp, err := c.client.Do(req)
		if err != nil {
			return "", fmt.Errorf("%w: fetch %s: %v", ErrArtifact, rawURL, err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return "", fmt.Errorf("%w: fetch %s: %s", ErrArtifact, rawURL, resp.Status)
		}
		src = resp.Body
	default:
		return "", fmt.Errorf("%w: url %q: scheme must be file, http or https", ErrArtifact, rawURL)
	}
	defer src.Close()

	tmp, err := os.CreateTemp(blobs, ".fetch-*")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(src, maxArtifactBytes+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("%w: download %s: %v", ErrArtifact, rawURL, err)
	}
	if n > maxArtifactBytes {
		return "", fmt.Errorf("%w: %s is larger than %d bytes", ErrArtifact, rawURL, int64(maxArtifactBytes))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return "", fmt.Errorf("%w: sha256 mismatch for %s: want %s, got %s", ErrArtifact, rawURL, sum, got)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	return final, nil
}

// unpack extracts a tar.gz into dir via a temporary sibling directory, so a
// half-unpacked release is never used. Entries may not escape dir.
//
// Containment does not rest on checking names: every write goes through an
// os.Root opened on the temporary directory, which resolves each path,
// symlinks included, inside that directory and refuses any step that would
// leave it. A chain of links that only escapes once followed (a/b/l -> ../..
// then a/b/l/m -> ../..) therefore cannot carry a write outside. The name
// checks below only turn the obvious cases into errors naming the entry.
//
// Symlinks are kept when they resolve inside the release (node_modules/.bin
// and the like) and refused otherwise, naming the entry: absolute targets
// and targets that climb above the release, judged by following the link
// from where it really lies, through any links before it, as the kernel
// would (see checkLink and resolveInside). Refusing them, rather than
// keeping links that merely cannot be written through here, is deliberate:
// the agent itself, with its own privileges, later reads the release (the
// Procfile, the command it starts), and a link to a host file would let an
// artifact make it read that file. Every link is checked again
// once all entries are written, since a later entry can change what an
// earlier link resolves to.
//
// Hard links are created when their target is a file inside the release
// (os.Root resolves it there) and refused otherwise. Devices and fifos are
// skipped.
func unpack(blob, dir string) error {
	f, err := os.Open(blob)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("%w: %s is not gzip: %v", ErrArtifact, filepath.Base(blob), err)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o750); err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".unpack-*")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	defer os.RemoveAll(tmp)
	if err := extract(tar.NewReader(zr), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, ".visor-unpacked")); serr == nil {
			return nil // another agent process unpacked it first
		}
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	return nil
}

// maxLinkHops bounds the symlinks followed while checking one link; the
// kernel gives up after 40, so a chain longer than this cannot be followed
// at all, but it cannot be shown to stay inside either and is refused.
const maxLinkHops = 255

// extract writes the entries of tr under tmp, all through an os.Root on
// tmp, then marks tmp complete with .visor-unpacked. See unpack.
func extract(tr *tar.Reader, tmp string) error {
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	defer root.Close()
	// links are the symlinks created so far, where they really lie (which
	// differs from the entry name when a link is made through a linked
	// directory), for the final check.
	type link struct{ real, entry string }
	var links []link
	var total int64
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: read tar: %v", ErrArtifact, err)
		}
		name := filepath.Clean(hdr.Name)
		if name == "." {
			continue
		}
		if escapesByName(name) {
			return fmt.Errorf("%w: tar entry %q escapes the release directory", ErrArtifact, hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
			}
		case tar.TypeReg:
			total += hdr.Size
			if total > maxArtifactBytes {
				return fmt.Errorf("%w: unpacked size exceeds %d bytes", ErrArtifact, int64(maxArtifactBytes))
			}
			if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
			}
			out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(hdr.Mode)&0o777)
			if err != nil {
				return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
			}
			_, err = io.Copy(out, io.LimitReader(tr, hdr.Size))
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%w: write %s: %v", ErrArtifact, name, err)
			}
		case tar.TypeSymlink:
			if filepath.IsAbs(hdr.Linkname) {
				return fmt.Errorf("%w: symlink %q -> %q escapes the release directory", ErrArtifact, hdr.Name, hdr.Linkname)
			}
			parent := filepath.Dir(name)
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
			}
			// Where the link really goes: the parent as os.Root resolves it.
			realParent, inside, err := resolveInside(root, "", parent)
			if err != nil || !inside {
				return fmt.Errorf("%w: symlink %q: cannot resolve its directory inside the release: %v", ErrArtifact, hdr.Name, err)
			}
			real := filepath.Join(realParent, filepath.Base(name))
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
			}
			if err := checkLink(root, real, hdr.Name); err != nil {
				return err
			}
			links = append(links, link{real, hdr.Name})
		case tar.TypeLink:
			// Hard link names are relative to the archive root, not to
			// the entry's directory.
			old := filepath.Clean(hdr.Linkname)
			if escapesByName(old) {
				return fmt.Errorf("%w: hard link %q -> %q escapes the release directory", ErrArtifact, hdr.Name, hdr.Linkname)
			}
			if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
				return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
			}
			// root.Link resolves both names inside the root, so a target
			// reached through a link that leaves it is refused.
			if err := root.Link(old, name); err != nil {
				return fmt.Errorf("%w: hard link %q -> %q: %v", ErrArtifact, hdr.Name, hdr.Linkname, err)
			}
			// A hard link to a symlink is a second symlink (Root.Link does
			// not follow old): check it like one.
			if st, err := root.Lstat(name); err == nil && st.Mode()&os.ModeSymlink != 0 {
				realParent, inside, err := resolveInside(root, "", filepath.Dir(name))
				if err != nil || !inside {
					return fmt.Errorf("%w: hard link %q: cannot resolve its directory inside the release: %v", ErrArtifact, hdr.Name, err)
				}
				links = append(links, link{filepath.Join(realParent, filepath.Base(name)), hdr.Name})
			}
		default:
			// Devices and fifos have no place in an app artifact.
			continue
		}
	}
	// A link checked when it was made may have been dangling then and
	// resolve outside now (x -> d/.. before d -> .): check them all again.
	for _, l := range links {
		if err := checkLink(root, l.real, l.entry); err != nil {
			return err
		}
	}
	// The marker is ours: drop any entry of that name (a symlink would be
	// written through) and create it afresh.
	const marker = ".visor-unpacked"
	if err := root.Remove(marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, marker, err)
	}
	m, err := root.OpenFile(marker, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	if err := m.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	return nil
}

// escapesByName reports whether a cleaned entry name is absolute or climbs
// out of the release directory by its text alone.
func escapesByName(name string) bool {
	return filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator))
}

// checkLink returns an error naming entry unless the symlink at real (a
// path in root without symlinks in it) resolves inside root.
func checkLink(root *os.Root, real, entry string) error {
	target, err := root.Readlink(real)
	if err != nil {
		return fmt.Errorf("%w: symlink %q: %v", ErrArtifact, entry, err)
	}
	_, inside, err := resolveInside(root, filepath.Dir(real), target)
	if err != nil {
		return fmt.Errorf("%w: symlink %q -> %q: %v", ErrArtifact, entry, target, err)
	}
	if !inside {
		return fmt.Errorf("%w: symlink %q -> %q escapes the release directory", ErrArtifact, entry, target)
	}
	return nil
}

// resolveInside follows rel from the directory dir of root (a path without
// symlinks in it, "" or "." for root itself) one component at a time, as
// the kernel would: symlinks are followed, and ".." goes to the parent of
// the real directory reached so far. It returns the real path reached and
// whether every step stayed inside root; an absolute link target or a ".."
// above root leaves it. A missing component, or a file where a directory is
// needed, ends the walk inside root, since the kernel's lookup fails there
// too (real is then only the part resolved).
func resolveInside(root *os.Root, dir, rel string) (real string, inside bool, err error) {
	if filepath.IsAbs(rel) {
		return "", false, nil
	}
	var cur []string
	if dir = filepath.Clean(dir); dir != "." {
		cur = strings.Split(dir, string(filepath.Separator))
	}
	todo := strings.Split(rel, string(filepath.Separator))
	hops := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return "", false, nil
			}
			cur = cur[:len(cur)-1]
			continue
		}
		p := filepath.Join(append(cur, c)...)
		st, err := root.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return filepath.Join(cur...), true, nil
		}
		if err != nil {
			return "", false, err
		}
		switch {
		case st.Mode()&os.ModeSymlink != 0:
			if hops++; hops > maxLinkHops {
				return "", false, fmt.Errorf("more than %d levels of symbolic links", maxLinkHops)
			}
			target, err := root.Readlink(p)
			if err != nil {
				return "", false, err
			}
			if filepath.IsAbs(target) {
				return "", false, nil
			}
			todo = append(strings.Split(target, string(filepath.Separator)), todo...)
		case st.IsDir():
			cur = append(cur, c)
		default:
			return p, true, nil
		}
	}
	return filepath.Join(cur...), true, nil
}

// procfileCommand returns the command of process type proc from the
// Procfile in dir ("name: command" lines; # comments).
func procfileCommand(dir, proc string) (string, error) {
	f, err := os.Open(filepath.Join(dir, "Procfile"))
	if err != nil {
		return "", fmt.Errorf("%w: no command for %q and no Procfile: %v", ErrArtifact, proc, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, cmd, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(name) == proc {
			if cmd = strings.TrimSpace(cmd); cmd != "" {
				return cmd, nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("%w: read Procfile: %v", ErrArtifact, err)
	}
	return "", fmt.Errorf("%w: Procfile has no process type %q", ErrArtifact, proc)
}
