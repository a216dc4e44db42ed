//go:build !linux

package logfile

import (
	"errors"
	"os"
)

var errCollapseUnsupported = errors.New("logfile: collapse range unsupported")

func collapseHead(f *os.File, n int64) error { return errCollapseUnsupported }
func readBase(f *os.File) int64              { return 0 }
func addBase(f *os.File, n int64)            {}
