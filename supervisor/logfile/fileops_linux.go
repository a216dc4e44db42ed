//go:build linux

package logfile

import (
	"errors"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// baseAttr holds the number of bytes removed from the head of a log file by
// rotation, so followers can translate their logical position.
const baseAttr = "user.visor.logfile.base"

// errCollapseUnsupported means the file system cannot collapse ranges.
var errCollapseUnsupported = errors.New("logfile: collapse range unsupported")

// collapseHead removes the first n bytes of f (n must be block-aligned and
// smaller than the file size).
func collapseHead(f *os.File, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return errCollapseUnsupported
	}
	if err != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	return nil
}

// readBase returns the rotation base recorded on f (0 if none) and whether
// it is stable; it is not while a rotation is removing the file's head.
func readBase(f *os.File) (base int64, stable bool) {
	var buf [32]byte
	n, err := unix.Fgetxattr(int(f.Fd()), baseAttr, buf[:])
	if err != nil || n <= 0 {
		return 0, true
	}
	v := string(buf[:n])
	stable = !strings.HasSuffix(v, "+")
	b, err := strconv.ParseInt(strings.TrimSuffix(v, "+"), 10, 64)
	if err != nil || b < 0 {
		return 0, true
	}
	return b, stable
}

// setBase records base on f, marked unstable ("+") while the head of f is
// being removed. Failures (no xattr support) are ignored: followers then
// fall back to restarting at offset 0.
func setBase(f *os.File, base int64, stable bool) {
	v := strconv.FormatInt(base, 10)
	if !stable {
		v += "+"
	}
	_ = unix.Fsetxattr(int(f.Fd()), baseAttr, []byte(v), 0)
}
