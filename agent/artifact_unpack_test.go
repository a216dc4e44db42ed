package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// tarEntry is one entry of a test artifact: a regular file (typ 0 or
// tar.TypeReg) with body, a directory, a symlink or a hard link to link.
type tarEntry struct {
	name string
	typ  byte
	link string
	body string
}

func tarFile(name, body string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeReg, body: body}
}

func tarSymlink(name, to string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeSymlink, link: to}
}

func tarHardlink(name, to string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeLink, link: to}
}

// writeTarGz writes entries, in order, as a tar.gz in a fresh temporary
// directory and returns its path.
func writeTarGz(t *testing.T, entries []tarEntry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644}
		switch e.typ {
		case tar.TypeReg:
			hdr.Mode, hdr.Size = 0o755, int64(len(e.body))
		case tar.TypeDir:
			hdr.Mode = 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "app.tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// listTree lists every path under base (relative, with its type), without
// following symlinks.
func listTree(t *testing.T, base string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		out = append(out, fmt.Sprintf("%s %v", rel, d.Type()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// unpackLayout makes base/outside/secret and base/x/y/neighbour (a file
// beside the release, as another release would be); unpack is pointed at
// base/x/y/release, so its temporary directory is base/x/y/.unpack-*:
// ".." from there is base/x/y and "../.." is base/x.
func unpackLayout(t *testing.T) (base, release string) {
	t.Helper()
	base = t.TempDir()
	if err := os.MkdirAll(filepath.Join(base, "outside"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "outside", "secret"), []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(base, "x", "y"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "x", "y", "neighbour"), []byte("other release"), 0o644); err != nil {
		t.Fatal(err)
	}
	return base, filepath.Join(base, "x", "y", "release")
}

func TestUnpackRefusesEscapes(t *testing.T) {
	// OUTSIDE in a link target stands for the absolute path of base/outside.
	cases := []struct {
		name    string
		entries []tarEntry
		entry   string // the entry the error must name
		escaped string // where an escape would write a file, relative to base
	}{
		{
			name: "chained symlinks",
			entries: []tarEntry{
				tarSymlink("a/b/l", "../.."),   // the temporary root itself: allowed
				tarSymlink("a/b/l/m", "../.."), // really two levels above it
				tarFile("a/b/l/m/ESCAPED", "pwned"),
			},
			entry:   "a/b/l/m",
			escaped: "x/ESCAPED",
		},
		{
			name: "absolute symlink then a file through it",
			entries: []tarEntry{
				tarSymlink("out", "OUTSIDE"),
				tarFile("out/ESCAPED", "pwned"),
			},
			entry:   "out",
			escaped: "outside/ESCAPED",
		},
		{
			name:    "dot-dot entry",
			entries: []tarEntry{tarFile("../ESCAPED", "pwned")},
			entry:   "../ESCAPED",
			escaped: "x/y/ESCAPED",
		},
		{
			name:    "dot-dot inside the entry name",
			entries: []tarEntry{tarFile("a/../../../ESCAPED", "pwned")},
			entry:   "a/../../../ESCAPED",
			escaped: "x/ESCAPED",
		},
		{
			name:    "symlink climbing out",
			entries: []tarEntry{tarSymlink("up", "../.."), tarFile("up/ESCAPED", "pwned")},
			entry:   "up",
			escaped: "x/ESCAPED",
		},
		{
			name: "symlink made to escape by a later entry",
			entries: []tarEntry{
				tarSymlink("x", "d/.."), // dangling when made
				tarSymlink("d", "."),    // now x is the root's parent
			},
			entry: "x",
		},
		{
			// The link check only runs once all entries are in, so these
			// writes meet x while it leads out: os.Root must stop them.
			name: "file through a symlink made to escape by a later entry",
			entries: []tarEntry{
				tarSymlink("x", "d/.."),
				tarSymlink("d", "."),
				tarFile("x/ESCAPED", "pwned"),
			},
			entry:   "x/ESCAPED",
			escaped: "x/y/ESCAPED",
		},
		{
			name: "hard link through a symlink made to escape by a later entry",
			entries: []tarEntry{
				tarSymlink("x", "d/.."),
				tarSymlink("d", "."),
				tarHardlink("h", "x/neighbour"),
			},
			entry: "h",
		},
		{
			// A hard link to a symlink is a copy of the link text, which
			// means something else one level up.
			name: "hard link to a symlink, moved to where it leads out",
			entries: []tarEntry{
				tarSymlink("a/up", ".."), // the root, from a/
				tarHardlink("b/up", "a/up"),
				tarHardlink("top", "a/up"),
			},
			entry: "top",
		},
		{
			name:    "hard link to outside",
			entries: []tarEntry{tarHardlink("h", "../../../outside/secret")},
			entry:   "h",
		},
		{
			name:    "hard link to an absolute path",
			entries: []tarEntry{tarHardlink("h", "OUTSIDE/secret")},
			entry:   "h",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base, release := unpackLayout(t)
			entries := slices.Clone(tc.entries)
			for i := range entries {
				entries[i].link = strings.Replace(entries[i].link, "OUTSIDE", filepath.Join(base, "outside"), 1)
			}
			blob := writeTarGz(t, entries)
			before := listTree(t, base)
			err := unpack(context.Background(), blob, release, defaultUnpackLimits(), -1)
			if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.entry)) {
				t.Fatalf("unpack: err = %v, want ErrArtifact naming %q", err, tc.entry)
			}
			if tc.escaped != "" {
				if _, err := os.Lstat(filepath.Join(base, tc.escaped)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s exists after the refused unpack (stat err %v)", tc.escaped, err)
				}
			}
			if after := listTree(t, base); !slices.Equal(before, after) {
				t.Errorf("unpack changed the tree around it:\nbefore %q\nafter  %q", before, after)
			}
			for p, want := range map[string]string{"outside/secret": "host secret", "x/y/neighbour": "other release"} {
				st, err := os.Stat(filepath.Join(base, p))
				if got, _ := os.ReadFile(filepath.Join(base, p)); string(got) != want || err != nil || st.Sys().(*syscall.Stat_t).Nlink != 1 {
					t.Errorf("%s = %q (stat %v), want it untouched and not linked to", p, got, err)
				}
			}
		})
	}
}

func TestUnpackInTreeLinks(t *testing.T) {
	cases := []struct {
		name    string
		entries []tarEntry
		check   func(t *testing.T, rel string)
	}{
		{
			name: "symlinks, linked directories and hard links inside the tree",
			entries: []tarEntry{
				{name: "lib/", typ: tar.TypeDir},
				tarFile("lib/tool.sh", "#!/bin/sh\necho tool\n"),
				tarSymlink("node_modules/.bin/tool", "../../lib/tool.sh"),
				tarSymlink("libdir", "lib"),
				tarFile("libdir/extra.txt", "through a linked dir"),
				tarFile("libdir/sub/deep.txt", "made under a linked dir"),
				tarSymlink("libdir/back", "../lib/tool.sh"), // made through the linked dir
				tarHardlink("lib/tool-copy", "lib/tool.sh"),
				tarHardlink("node_modules/.bin/tool2", "node_modules/.bin/tool"), // a second symlink
				tarSymlink("self", "."),
				tarSymlink("later", "data/later.txt"), // dangling until the next entries
				tarFile("data/later.txt", "late"),
			},
			check: func(t *testing.T, rel string) {
				for p, want := range map[string]string{
					"node_modules/.bin/tool":  "#!/bin/sh\necho tool\n",
					"lib/extra.txt":           "through a linked dir",
					"lib/sub/deep.txt":        "made under a linked dir",
					"lib/back":                "#!/bin/sh\necho tool\n",
					"node_modules/.bin/tool2": "#!/bin/sh\necho tool\n",
					"self/later":              "late",
				} {
					if got, err := os.ReadFile(filepath.Join(rel, p)); err != nil || string(got) != want {
						t.Errorf("%s = %q, %v; want %q", p, got, err, want)
					}
				}
				if to, err := os.Readlink(filepath.Join(rel, "libdir")); err != nil || to != "lib" {
					t.Errorf("libdir -> %q, %v; want a symlink to lib", to, err)
				}
				st, err := os.Lstat(filepath.Join(rel, "lib", "extra.txt"))
				if err != nil || !st.Mode().IsRegular() {
					t.Errorf("lib/extra.txt: %v, %v; want a regular file written through libdir", st, err)
				}
				tool, err := os.Stat(filepath.Join(rel, "lib", "tool.sh"))
				if err != nil || tool.Mode().Perm()&0o100 == 0 {
					t.Fatalf("lib/tool.sh: %v, %v; want it executable", tool, err)
				}
				if cp, err := os.Stat(filepath.Join(rel, "lib", "tool-copy")); err != nil || !os.SameFile(tool, cp) {
					t.Errorf("lib/tool-copy is not a hard link to lib/tool.sh: %v", err)
				}
			},
		},
		{
			name: "an artifact's own marker is replaced, not written through",
			entries: []tarEntry{
				tarFile("Procfile", "web: ./run\n"),
				tarSymlink(".visor-unpacked", "Procfile"),
			},
			check: func(t *testing.T, rel string) {
				if got, _ := os.ReadFile(filepath.Join(rel, "Procfile")); string(got) != "web: ./run\n" {
					t.Errorf("Procfile = %q, want it untouched", got)
				}
				if st, err := os.Lstat(filepath.Join(rel, ".visor-unpacked")); err != nil || !st.Mode().IsRegular() {
					t.Errorf(".visor-unpacked: %v, %v; want a regular file", st, err)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base, release := unpackLayout(t)
			before := listTree(t, base)
			if err := unpack(context.Background(), writeTarGz(t, tc.entries), release, defaultUnpackLimits(), -1); err != nil {
				t.Fatalf("unpack: %v", err)
			}
			tc.check(t, release)
			// Nothing but the release itself appeared.
			var after []string
			for _, p := range listTree(t, base) {
				if p != "x/y/release d---------" && !strings.HasPrefix(p, "x/y/release/") {
					after = append(after, p)
				}
			}
			if !slices.Equal(before, after) {
				t.Errorf("unpack wrote outside the release:\nbefore %q\nafter  %q", before, after)
			}
		})
	}
}
