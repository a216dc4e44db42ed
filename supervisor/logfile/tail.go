package logfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// tailBlock is the size of the blocks Tail reads backwards.
const tailBlock = 64 << 10

// tailWholeRead is the largest range Tail reads in one go once it knows the
// line boundaries; beyond it, lines are read one by one (capped).
const tailWholeRead = 4 << 20

// tailReserve caps the line boundaries Tail reserves room for up front: n
// comes from the caller (a request parameter), so memory must grow with the
// lines found, never with n.
const tailReserve = 4096

// ErrNegativeCount is returned (wrapped) by Tail for n < 0.
var ErrNegativeCount = errors.New("logfile: negative line count")

// Tail returns the last n lines of the log at path with default options.
// See [Options.Tail].
func Tail(path string, n int) ([]string, error) {
	return Options{}.Tail(path, n)
}

// Tail returns the last n lines of the log at path, oldest first, without
// their newlines. When the active file holds fewer than n lines, older lines
// come from the rotated files path.1 … path.MaxFiles. Files are read
// backwards in blocks, so the cost depends on n and the line lengths, not on
// the file size; memory grows with the lines found, not with n, so a huge n
// simply returns every line there is. Lines longer than MaxLineBytes are cut and end with
// TruncatedMarker.
func (o Options) Tail(path string, n int) ([]string, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: %d", ErrNegativeCount, n)
	}
	o = o.WithDefaults()
	var out []string
	// atStart: out[0] begins at the start of its file, so it may be the
	// second half of a line cut by rotation (collapse mode cuts at a block
	// boundary) whose first half ends the next older file.
	atStart := false
	for i := 0; i <= o.MaxFiles; i++ {
		if len(out) >= n && !atStart {
			break
		}
		p := path
		want := n - len(out)
		if i > 0 {
			p = rotatedName(path, i)
			if want < math.MaxInt {
				want++ // its last line may continue in the newer file
			}
		}
		lines, endsNL, fromStart, err := tailFile(p, want, o.MaxLineBytes)
		if err != nil {
			if i > 0 && errors.Is(err, fs.ErrNotExist) {
				break
			}
			return nil, err
		}
		if atStart && !endsNL && len(lines) > 0 && len(out) > 0 {
			out[0] = joinCapped(lines[len(lines)-1], out[0], o.MaxLineBytes)
			lines = lines[:len(lines)-1]
		}
		atStart = fromStart
		if room := max(n-len(out), 0); len(lines) > room {
			lines = lines[len(lines)-room:]
			atStart = false
		}
		if i > 0 && len(out) >= n {
			break // only looked for the other half of out[0]
		}
		out = append(lines, out...)
	}
	return out, nil
}

// joinCapped joins the two halves of a line, each possibly already cut,
// keeping the result within max bytes (plus the marker).
func joinCapped(a, b string, max int) string {
	if strings.HasSuffix(a, TruncatedMarker) {
		return a
	}
	bCut := strings.HasSuffix(b, TruncatedMarker)
	s := a + strings.TrimSuffix(b, TruncatedMarker)
	if len(s) > max || bCut {
		return string(trimPartialRune([]byte(s[:min(len(s), max)]))) + TruncatedMarker
	}
	return s
}

// tailFile returns the last n lines of one file, whether it ends with a
// newline (an empty file counts as ending with one), and whether the first
// line returned starts at the beginning of the file.
func tailFile(path string, n, maxLine int) (lines []string, endsNL, fromStart bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, false, fmt.Errorf("tail: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, false, fmt.Errorf("tail: %w", err)
	}
	size := st.Size()
	if n == 0 || size == 0 {
		return nil, true, true, nil
	}

	// Find line boundaries scanning backwards; content is read afterwards,
	// capped per line, so a huge line costs no memory.
	type span struct{ start, end int64 }
	spans := make([]span, 0, min(n, tailReserve))
	buf := make([]byte, tailBlock)
	end := size // end of the line being collected (exclusive)
	pos := size
	var last [1]byte
	if _, err := f.ReadAt(last[:], size-1); err != nil {
		return nil, false, false, fmt.Errorf("tail: %w", err)
	}
	endsNL = last[0] == '\n'
	if endsNL {
		end, pos = size-1, size-1
	}
	for pos > 0 && len(spans) < n {
		blk := min(int64(tailBlock), pos)
		b := buf[:blk]
		if _, err := f.ReadAt(b, pos-blk); err != nil && !errors.Is(err, io.EOF) {
			return nil, false, false, fmt.Errorf("tail: %w", err)
		}
		for len(b) > 0 && len(spans) < n {
			i := bytes.LastIndexByte(b, '\n')
			if i < 0 {
				break
			}
			nl := pos - blk + int64(i)
			spans = append(spans, span{nl + 1, end})
			end = nl
			b = b[:i]
		}
		pos -= blk
	}
	if len(spans) < n && pos == 0 {
		spans = append(spans, span{0, end})
	}
	fromStart = spans[len(spans)-1].start == 0

	// One read for the whole range when it is small enough, else one per line.
	var whole []byte
	first := spans[len(spans)-1].start
	if span := spans[0].end - first; span <= tailWholeRead {
		whole = make([]byte, span)
		if _, err := f.ReadAt(whole, first); err != nil && !errors.Is(err, io.EOF) {
			return nil, false, false, fmt.Errorf("tail: %w", err)
		}
	}
	lines = make([]string, len(spans))
	for i, s := range spans {
		l := s.end - s.start
		cut := l > int64(maxLine)
		if cut {
			l = int64(maxLine)
		}
		var b []byte
		if whole != nil {
			b = whole[s.start-first : s.start-first+l]
		} else {
			b = make([]byte, l)
			if _, err := f.ReadAt(b, s.start); err != nil && !errors.Is(err, io.EOF) {
				return nil, false, false, fmt.Errorf("tail: %w", err)
			}
		}
		if cut {
			lines[len(spans)-1-i] = string(trimPartialRune(b)) + TruncatedMarker
		} else {
			lines[len(spans)-1-i] = string(b)
		}
	}
	return lines, endsNL, fromStart, nil
}

// trimPartialRune drops an incomplete UTF-8 sequence at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			return b
		}
	}
	return b
}
