//go:build unix

package logfile

import (
	"io/fs"
	"syscall"
)

// blockSize returns the file system block size of a file (0 if unknown).
func blockSize(st fs.FileInfo) int64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int64(s.Blksize)
	}
	return 0
}
