package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzLimits keep each fuzz run's unpacking small.
var fuzzLimits = unpackLimits{maxBytes: 64 << 10, maxEntries: 64}

// rawTar builds an uncompressed tar from headers (bodies of hdr.Size bytes
// of 'x' for regular files).
func rawTar(t testing.TB, hdrs []*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			if _, err := tw.Write(bytes.Repeat([]byte("x"), int(h.Size))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzUnpack unpacks arbitrary bytes as an artifact (gzip-compressed
// first unless they already are gzip, so the fuzzer works on the tar
// structure) and checks that unpacking never panics, never writes outside
// the release (a sentinel beside it stays as it was, nothing else appears
// there, no symlink in the release resolves outside it) and stays within
// its limits.
func FuzzUnpack(f *testing.F) {
	reg := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: size}
	}
	dir := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
	sym := func(name, to string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: to, Mode: 0o777}
	}
	hard := func(name, to string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: to, Mode: 0o644}
	}
	for _, hs := range [][]*tar.Header{
		{dir("app/"), reg("app/Procfile", 20), reg("app/run", 10)},
		{reg("a", 3), sym("l", "a"), hard("h", "a")},
		{reg("../outside/victim", 5)},
		{reg("/abs", 5)},
		{sym("l", "../outside"), reg("l/victim", 5)},
		{sym("l", "/etc"), reg("l/x", 1)},
		{dir("a/b/"), sym("a/b/l", "../.."), sym("a/b/l/m", "../.."), reg("a/b/l/m/victim", 2)},
		{sym("x", "d/.."), dir("d/"), sym("d/y", "../../outside")},
		{hard("h", "../outside/victim")},
		{sym("s", "."), hard("h", "s")},
		{{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o644}, {Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o644}},
		{reg(releaseMarker, 1), sym("m", releaseMarker)},
		{reg("big", 100<<10)},
	} {
		raw := rawTar(f, hs)
		f.Add(raw)
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(raw)
		zw.Close()
		f.Add(gz.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		blob := filepath.Join(base, "blob")
		if !bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
			var gz bytes.Buffer
			zw := gzip.NewWriter(&gz)
			zw.Write(data)
			zw.Close()
			data = gz.Bytes()
		}
		if err := os.WriteFile(blob, data, 0o600); err != nil {
			t.Fatal(err)
		}
		outside := filepath.Join(base, "outside")
		if err := os.Mkdir(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		victim := filepath.Join(outside, "victim")
		if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		rel := filepath.Join(base, "releases", "rel")
		err := unpack(context.Background(), blob, rel, fuzzLimits, -1)

		// Nothing outside the release changed.
		if b, rerr := os.ReadFile(victim); rerr != nil || string(b) != "keep" {
			t.Fatalf("the sentinel outside the release changed: %q, %v", b, rerr)
		}
		if ents, _ := os.ReadDir(outside); len(ents) != 1 {
			t.Fatalf("entries appeared outside the release: %v", ents)
		}
		ents, _ := os.ReadDir(base)
		for _, e := range ents {
			switch e.Name() {
			case "blob", "outside", "releases":
			default:
				t.Fatalf("entry %q appeared beside the release", e.Name())
			}
		}
		rels, _ := os.ReadDir(filepath.Join(base, "releases"))
		if err != nil {
			if len(rels) != 0 {
				t.Fatalf("a failed unpack (%v) left %v", err, rels)
			}
			return
		}
		if len(rels) != 1 || rels[0].Name() != "rel" {
			t.Fatalf("releases = %v, want only rel", rels)
		}
		realRel, eerr := filepath.EvalSymlinks(rel)
		if eerr != nil {
			t.Fatal(eerr)
		}
		var entries int
		var size int64
		werr := filepath.WalkDir(rel, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			entries++
			if d.Type()&fs.ModeSymlink != 0 {
				// A link that resolves (dangling ones do not) must stay inside.
				if to, err := filepath.EvalSymlinks(p); err == nil && to != realRel && !strings.HasPrefix(to, realRel+string(filepath.Separator)) {
					t.Errorf("symlink %s resolves outside the release, to %s", p, to)
				}
				return nil
			}
			if d.Type().IsRegular() {
				info, err := d.Info()
				if err != nil {
					return err
				}
				size += info.Size()
			}
			return nil
		})
		if werr != nil {
			t.Fatal(werr)
		}
		// Entries: the release itself, the marker, and at most maxEntries
		// (directories that names imply included).
		if size > fuzzLimits.maxBytes+64 {
			t.Errorf("unpacked %d bytes, more than the %d allowed", size, fuzzLimits.maxBytes)
		}
		if entries > 2+fuzzLimits.maxEntries {
			t.Errorf("unpacked %d entries", entries)
		}
	})
}
