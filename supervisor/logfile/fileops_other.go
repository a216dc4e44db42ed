//go:build !linux

package logfile

import (
	"errors"
	"os"
)

var errCollapseUnsupported = errors.New("logfile: collapse range unsupported")

func collapseHead(f *os.File, n int64) error { return errCollapseUnsupported }

// readBase: no extended attributes are used outside Linux.
func readBase(f *os.File) (base int64, stable bool) { return 0, true }

func setBase(f *os.File, base int64, stable bool) {}
