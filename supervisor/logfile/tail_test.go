package logfile

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
}

func TestTailSmall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		content string
		n       int
		want    []string
	}{
		{"empty file", "", 3, nil},
		{"zero lines", "a\nb\n", 0, nil},
		{"fewer than n", "a\nb\n", 5, []string{"a", "b"}},
		{"exactly n", "a\nb\nc\n", 3, []string{"a", "b", "c"}},
		{"last two", "a\nb\nc\n", 2, []string{"b", "c"}},
		{"no trailing newline", "a\nb\nc", 2, []string{"b", "c"}},
		{"empty lines kept", "a\n\n\nb\n", 3, []string{"", "", "b"}},
		{"single newline", "\n", 2, []string{""}},
		{"one line no newline", "only", 1, []string{"only"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "x.log")
			writeFile(t, p, tc.content)
			got, err := Tail(p, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tc.want) {
				t.Fatalf("Tail(%q, %d) = %q, want %q", tc.content, tc.n, got, tc.want)
			}
		})
	}
}

// writeNumbered writes lines "line %08d" from..to-1 to path.
func writeNumbered(t testing.TB, path string, from, to int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	line := []byte("line 00000000\n")
	for i := from; i < to; i++ {
		for j, v := 12, i; j >= 5; j, v = j-1, v/10 { // cheaper than fmt under -race
			line[j] = byte('0' + v%10)
		}
		w.Write(line)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestTailBigFile(t *testing.T) {
	t.Parallel()
	const total = 300_000 // 4.2 MB, many 64 KiB blocks
	p := filepath.Join(t.TempDir(), "big.log")
	writeNumbered(t, p, 0, total)
	for _, n := range []int{1, 10, 5000, 20000} { // 20000 lines span several blocks
		got, err := Tail(p, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != n {
			t.Fatalf("Tail(%d) returned %d lines", n, len(got))
		}
		for i, l := range got {
			if want := fmt.Sprintf("line %08d", total-n+i); l != want {
				t.Fatalf("Tail(%d)[%d] = %q, want %q", n, i, l, want)
			}
		}
	}
	// More than the file holds: everything.
	small := filepath.Join(t.TempDir(), "small.log")
	writeNumbered(t, small, 0, 20_000)
	got, err := Tail(small, 50_000)
	if err != nil || len(got) != 20_000 || got[0] != "line 00000000" || got[19_999] != "line 00019999" {
		t.Fatalf("Tail beyond size: %d lines, %v", len(got), err)
	}
}

func TestTailSpansRotatedFiles(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "app.log")
	writeNumbered(t, rotatedName(p, 2), 0, 10)
	writeNumbered(t, rotatedName(p, 1), 10, 20)
	writeNumbered(t, p, 20, 23)
	got, err := Options{MaxFiles: 5}.Tail(p, 15)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 15 || got[0] != "line 00000008" || got[14] != "line 00000022" {
		t.Fatalf("Tail across rotation = %q", got)
	}
	// Only MaxFiles rotated files are consulted.
	got, err = Options{MaxFiles: 1}.Tail(p, 100)
	if err != nil || len(got) != 13 {
		t.Fatalf("Tail with MaxFiles 1: %d lines, %v", len(got), err)
	}
}

// TestTailHugeCount: a count far beyond the file (a request's ?tail=) must
// cost memory by the lines found, not by n, and return every line there is.
func TestTailHugeCount(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "app.log")
	writeNumbered(t, rotatedName(p, 1), 0, 10)
	writeNumbered(t, p, 10, 5000)
	// An empty active file: the count for the rotated file is n, plus one.
	empty := filepath.Join(dir, "empty.log")
	writeFile(t, empty, "")
	writeNumbered(t, rotatedName(empty, 1), 0, 3)
	for _, n := range []int{math.MaxInt, 1 << 40} {
		got, err := Tail(p, n)
		if err != nil || len(got) != 5000 || got[0] != "line 00000000" || got[4999] != "line 00004999" {
			t.Fatalf("Tail(%d): %d lines, %v", n, len(got), err)
		}
		got, err = Tail(empty, n)
		if err != nil || len(got) != 3 || got[0] != "line 00000000" {
			t.Fatalf("Tail(%d) with an empty active file = %q, %v", n, got, err)
		}
	}
}

func TestTailLongLines(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "long.log")
	long := strings.Repeat("x", 5<<20) // longer than a read block and tailWholeRead
	utf := strings.Repeat("é", 10)     // 2-byte runes, cut mid-rune at 7 bytes
	writeFile(t, p, "short\n"+long+"\n"+utf+"\nend\n")
	got, err := Options{MaxLineBytes: 7}.Tail(p, 4)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"short", "xxxxxxx" + TruncatedMarker, "ééé" + TruncatedMarker, "end"}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	got, err = Tail(p, 3) // default cap 16 KiB
	if err != nil || len(got[0]) != DefaultMaxLineBytes+len(TruncatedMarker) {
		t.Fatalf("default cap: len %d, %v", len(got[0]), err)
	}
}

func TestTailBadInput(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "x.log")
	if _, err := Tail(p, 1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	writeFile(t, p, "a\n")
	if _, err := Tail(p, -1); !errors.Is(err, ErrNegativeCount) {
		t.Fatalf("negative n: %v", err)
	}
}

func BenchmarkTail100MB(b *testing.B) {
	p := filepath.Join(b.TempDir(), "big.log")
	writeNumbered(b, p, 0, 100<<20/14) // 14-byte lines
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("lines=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if l, err := Tail(p, n); err != nil || len(l) != n {
					b.Fatalf("Tail: %d lines, %v", len(l), err)
				}
			}
		})
	}
}

func TestTailJoinsLineCutByRotation(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "app.log")
	writeFile(t, rotatedName(p, 1), "a\nbegin of ")
	writeFile(t, p, "the line\nnext\n")
	for n, want := range map[int][]string{
		1: {"next"},
		2: {"begin of the line", "next"},
		3: {"a", "begin of the line", "next"},
		9: {"a", "begin of the line", "next"},
	} {
		got, err := Tail(p, n)
		if err != nil || fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
			t.Errorf("Tail(%d) = %q, %v; want %q", n, got, err, want)
		}
	}
	got, err := Options{MaxLineBytes: 12}.Tail(p, 2)
	if want := []string{"begin of the" + TruncatedMarker, "next"}; err != nil || fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("capped join = %q, %v; want %q", got, err, want)
	}

	// After real collapse rotations (cuts at block boundaries) Tail still
	// returns every line whole.
	t.Run("after collapse rotations", func(t *testing.T) {
		qdir := t.TempDir()
		requireCollapse(t, qdir)
		q := filepath.Join(qdir, "real.log")
		f, err := OpenAppend(q)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r := NewRotator(nil)
		o := Options{MaxBytes: 8 << 10, MaxFiles: 10}.WithDefaults()
		var want []string
		for i := range 5000 {
			l := fmt.Sprintf("line %08d", i)
			want = append(want, l)
			appendTo(t, f, l+"\n")
			if i%1000 == 999 {
				if mode, err := r.rotate(q, o); err != nil || mode != ModeCollapse {
					t.Fatalf("rotate = %q, %v", mode, err)
				}
			}
		}
		got, err := o.Tail(q, 5000)
		if err != nil || fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
			t.Fatalf("Tail after collapse rotations: %d lines, %v", len(got), err)
		}
	})
}
