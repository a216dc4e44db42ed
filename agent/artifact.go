package agent

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

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
// skipped (their size still counts, see unpackLimits).
//
// Limits (lim): the uncompressed tar stream, every entry's header and
// data included, skipped entries too, may be at most lim.maxBytes, and so
// may the sum of the sizes the headers announce (a sparse file's holes
// count: they are written out); at most lim.maxEntries entries. Going over
// either is an error naming the limit. Unpacking ends with ctx.
//
// gid >= 0 hands the release over to instances running with that group
// (see artifactCache): owned by root and gid, directories 0750, files
// 0640 or 0750, nothing writable by the group. gid < 0 keeps it root's
// alone (the directory itself is 0700).
func unpack(ctx context.Context, blob, dir string, lim unpackLimits, gid int) error {
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
	size, err := extract(ctx, zr, tmp, lim)
	if err != nil {
		return err
	}
	if gid >= 0 {
		if err := handOver(tmp, gid); err != nil {
			return err
		}
	}
	// The marker is ours (extract removed any entry of that name); it
	// records the release's size for pruning.
	m, err := os.OpenFile(filepath.Join(tmp, releaseMarker), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	_, err = m.WriteString(strconv.FormatInt(size, 10) + "\n")
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, releaseMarker)); serr == nil {
			return nil // another agent process unpacked it first
		}
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	return nil
}

// releaseMarker is the file that marks a release complete; it holds the
// release's size in bytes, and its mtime is the release's last use.
const releaseMarker = ".visor-unpacked"

// unpackLimits bound what one artifact may unpack to (see unpack).
type unpackLimits struct {
	maxBytes   int64
	maxEntries int
}

// handOver makes the unpacked tree in tmp (written by root, private) owned
// by root and group gid, readable and searchable by the group, writable
// by nobody but root; symlinks are only re-owned. Set-id bits never
// survive extraction (modes are masked to 0777).
func handOver(tmp string, gid int) error {
	err := filepath.WalkDir(tmp, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, 0, gid); err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			return nil
		case d.IsDir():
			return os.Chmod(p, 0o750)
		default:
			info, err := d.Info()
			if err != nil {
				return err
			}
			mode := fs.FileMode(0o640)
			if info.Mode()&0o111 != 0 {
				mode = 0o750
			}
			return os.Chmod(p, mode)
		}
	})
	if err != nil {
		return fmt.Errorf("%w: hand the release over to group %d: %v", ErrArtifact, gid, err)
	}
	return nil
}

// countingReader fails with errUnpackedTooLarge once more than max bytes
// have been read through it, and with ctx's cause once ctx ends.
type countingReader struct {
	ctx  context.Context
	r    io.Reader
	n    int64
	max  int64
	over bool
}

var errUnpackedTooLarge = errors.New("unpacked size limit reached")

func (c *countingReader) Read(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, context.Cause(c.ctx)
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		c.over = true
		return 0, errUnpackedTooLarge
	}
	return n, err
}

// maxLinkHops bounds the symlinks followed while checking one link; the
// kernel gives up after 40, so a chain longer than this cannot be followed
// at all, but it cannot be shown to stay inside either and is refused.
const maxLinkHops = 255

// extract writes the entries of the tar stream r under tmp, all through an
// os.Root on tmp, within lim, and returns the bytes of file data written.
// See unpack.
func extract(ctx context.Context, r io.Reader, tmp string, lim unpackLimits) (int64, error) {
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	defer root.Close()
	cr := &countingReader{ctx: ctx, r: r, max: lim.maxBytes}
	x := &extractor{ctx: ctx, root: root, cr: cr, tr: tar.NewReader(cr), lim: lim, dirs: map[string]bool{}}
	for {
		hdr, err := x.tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, x.readErr(err, "read tar")
		}
		name, skip, err := x.admit(hdr)
		if err != nil {
			return 0, err
		}
		if !skip {
			if err := x.entry(hdr, name); err != nil {
				return 0, err
			}
		}
	}
	// A link checked when it was made may have been dangling then and
	// resolve outside now (x -> d/.. before d -> .): check them all again.
	for _, l := range x.links {
		if err := checkLink(root, l.real, l.entry); err != nil {
			return 0, err
		}
	}
	// The marker is unpack's: drop any entry of that name (a symlink
	// would be written through); unpack creates it afresh.
	if err := root.Remove(releaseMarker); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, releaseMarker, err)
	}
	return x.written, nil
}

// extractor is extract's state: the tar stream, the os.Root everything is
// written through, and the counts the limits bound.
type extractor struct {
	ctx  context.Context
	root *os.Root
	cr   *countingReader
	tr   *tar.Reader
	lim  unpackLimits
	// links are the symlinks created so far, where they really lie (which
	// differs from the entry name when a link is made through a linked
	// directory), for the final check.
	links              []extractedLink
	announced, written int64
	entries            int
	dirs               map[string]bool // directories counted as entries
}

type extractedLink struct{ real, entry string }

func (x *extractor) tooLarge() error {
	return fmt.Errorf("%w: unpacks to more than the %d bytes allowed (artifact_max_unpacked_bytes)", ErrArtifact, x.lim.maxBytes)
}

func (x *extractor) tooMany() error {
	return fmt.Errorf("%w: has more than the %d entries allowed, directories its names imply included (artifact_max_entries)", ErrArtifact, x.lim.maxEntries)
}

// readErr names why reading the stream failed: the size limit, the
// context, or what (the tar or a write of name) went wrong.
func (x *extractor) readErr(err error, what string) error {
	if x.cr.over {
		return x.tooLarge()
	}
	if x.ctx.Err() != nil {
		return fmt.Errorf("%w: unpack: %w", ErrArtifact, context.Cause(x.ctx))
	}
	return fmt.Errorf("%w: %s: %v", ErrArtifact, what, err)
}

// admit counts entry hdr (and the directories its name implies) against
// the limits and checks its name: the cleaned name, or skip for the root
// itself.
func (x *extractor) admit(hdr *tar.Header) (name string, skip bool, err error) {
	if x.entries++; x.entries > x.lim.maxEntries {
		return "", false, x.tooMany()
	}
	// Every entry's size counts, skipped ones too: their data is read
	// (and, for a sparse file, its holes written) all the same.
	if hdr.Size < 0 || hdr.Size > x.lim.maxBytes-x.announced {
		return "", false, x.tooLarge()
	}
	x.announced += hdr.Size
	name = filepath.Clean(hdr.Name)
	if name == "." {
		return "", true, nil
	}
	if escapesByName(name) {
		return "", false, fmt.Errorf("%w: tar entry %q escapes the release directory", ErrArtifact, hdr.Name)
	}
	// Directories a name implies count as entries too: one long name
	// must not create thousands of them.
	for d := filepath.Dir(name); d != "." && !x.dirs[d]; d = filepath.Dir(d) {
		x.dirs[d] = true
		if x.entries++; x.entries > x.lim.maxEntries {
			return "", false, x.tooMany()
		}
	}
	if hdr.Typeflag == tar.TypeDir {
		x.dirs[name] = true
	}
	return name, false, nil
}

// entry writes entry hdr under name (admitted). Devices and fifos have no
// place in an app artifact and are skipped.
func (x *extractor) entry(hdr *tar.Header, name string) error {
	mkdir := func(dir string) error {
		if err := x.root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
		}
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return mkdir(name)
	case tar.TypeReg:
		if err := mkdir(filepath.Dir(name)); err != nil {
			return err
		}
		return x.file(hdr, name)
	case tar.TypeSymlink:
		if filepath.IsAbs(hdr.Linkname) {
			return fmt.Errorf("%w: symlink %q -> %q escapes the release directory", ErrArtifact, hdr.Name, hdr.Linkname)
		}
		if err := mkdir(filepath.Dir(name)); err != nil {
			return err
		}
		return x.symlink(hdr, name)
	case tar.TypeLink:
		// Hard link names are relative to the archive root, not to the
		// entry's directory.
		if escapesByName(filepath.Clean(hdr.Linkname)) {
			return fmt.Errorf("%w: hard link %q -> %q escapes the release directory", ErrArtifact, hdr.Name, hdr.Linkname)
		}
		if err := mkdir(filepath.Dir(name)); err != nil {
			return err
		}
		return x.hardLink(hdr, name)
	}
	return nil
}

// file writes regular file hdr to name.
func (x *extractor) file(hdr *tar.Header, name string) error {
	out, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, os.FileMode(hdr.Mode)&0o777)
	if err != nil {
		return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
	}
	_, err = io.Copy(out, io.LimitReader(x.tr, hdr.Size))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return x.readErr(err, "write "+name)
	}
	x.written += hdr.Size
	return nil
}

// symlink creates symlink hdr at name, checked to stay inside the release
// where it really lies.
func (x *extractor) symlink(hdr *tar.Header, name string) error {
	// Where the link really goes: the parent as os.Root resolves it.
	realParent, inside, err := resolveInside(x.root, "", filepath.Dir(name))
	if err != nil || !inside {
		return fmt.Errorf("%w: symlink %q: cannot resolve its directory inside the release: %v", ErrArtifact, hdr.Name, err)
	}
	real := filepath.Join(realParent, filepath.Base(name))
	if err := x.root.Symlink(hdr.Linkname, name); err != nil {
		return fmt.Errorf("%w: tar entry %q: %v", ErrArtifact, hdr.Name, err)
	}
	if err := checkLink(x.root, real, hdr.Name); err != nil {
		return err
	}
	x.links = append(x.links, extractedLink{real, hdr.Name})
	return nil
}

// hardLink creates hard link hdr at name. root.Link resolves both names
// inside the root, so a target reached through a link that leaves it is
// refused.
func (x *extractor) hardLink(hdr *tar.Header, name string) error {
	if err := x.root.Link(filepath.Clean(hdr.Linkname), name); err != nil {
		return fmt.Errorf("%w: hard link %q -> %q: %v", ErrArtifact, hdr.Name, hdr.Linkname, err)
	}
	// A hard link to a symlink is a second symlink (Root.Link does not
	// follow old): check it like one.
	if st, err := x.root.Lstat(name); err == nil && st.Mode()&os.ModeSymlink != 0 {
		realParent, inside, err := resolveInside(x.root, "", filepath.Dir(name))
		if err != nil || !inside {
			return fmt.Errorf("%w: hard link %q: cannot resolve its directory inside the release: %v", ErrArtifact, hdr.Name, err)
		}
		x.links = append(x.links, extractedLink{filepath.Join(realParent, filepath.Base(name)), hdr.Name})
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
