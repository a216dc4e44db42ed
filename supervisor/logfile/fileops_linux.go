//go:build linux

package logfile

import (
	"errors"
	"os"
	"strconv"

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

// readBase returns the rotation base recorded on f, or 0.
func readBase(f *os.File) int64 {
	var buf [32]byte
	n, err := unix.Fgetxattr(int(f.Fd()), baseAttr, buf[:])
	if err != nil || n <= 0 {
		return 0
	}
	v, err := strconv.ParseInt(string(buf[:n]), 10, 64)
	if err != nil || v < 0 {
		return 0
	}
	return v
}

// addBase adds n to the rotation base of f. Failures (no xattr support) are
// ignored: followers then fall back to restarting at offset 0.
func addBase(f *os.File, n int64) {
	v := readBase(f) + n
	_ = unix.Fsetxattr(int(f.Fd()), baseAttr, []byte(strconv.FormatInt(v, 10)), 0)
}
