//go:build !unix

package logfile

import "io/fs"

func blockSize(st fs.FileInfo) int64 { return 0 }
