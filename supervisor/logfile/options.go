package logfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Defaults applied by [Options.WithDefaults] to zero fields.
const (
	DefaultMaxBytes     int64 = 10 << 20
	DefaultMaxFiles           = 5
	DefaultMaxLineBytes       = 16 << 10
)

// TruncatedMarker is appended by [Tail] and [Follow] to a line cut at
// Options.MaxLineBytes.
const TruncatedMarker = " [line truncated]"

// ErrInvalidOptions is returned (wrapped) by [Options.Validate].
var ErrInvalidOptions = errors.New("logfile: invalid options")

// ErrRunning is returned by [Rotator.Run] when it is already running.
var ErrRunning = errors.New("logfile: rotator already running")

// ErrNotRegistered is returned (wrapped) by [Rotator.RotateNow] for a path
// that was not added to the Rotator.
var ErrNotRegistered = errors.New("logfile: path not registered for rotation")

// Options configures rotation and reading of one log file. The zero value
// means all defaults.
type Options struct {
	// MaxBytes is the size above which the active file is rotated.
	// Zero means DefaultMaxBytes (10 MiB).
	MaxBytes int64 `json:"max_bytes,omitempty"`
	// MaxFiles is how many rotated files (path.1 … path.N) are kept.
	// Zero means DefaultMaxFiles (5).
	MaxFiles int `json:"max_files,omitempty"`
	// MaxLineBytes caps the length of a line returned by Tail or written by
	// Follow; longer lines are cut and TruncatedMarker is appended.
	// Zero means DefaultMaxLineBytes (16 KiB).
	MaxLineBytes int `json:"max_line_bytes,omitempty"`
}

// Validate reports an error naming the first negative field.
func (o Options) Validate() error {
	switch {
	case o.MaxBytes < 0:
		return fmt.Errorf("%w: max_bytes %d is negative", ErrInvalidOptions, o.MaxBytes)
	case o.MaxFiles < 0:
		return fmt.Errorf("%w: max_files %d is negative", ErrInvalidOptions, o.MaxFiles)
	case o.MaxLineBytes < 0:
		return fmt.Errorf("%w: max_line_bytes %d is negative", ErrInvalidOptions, o.MaxLineBytes)
	}
	return nil
}

// WithDefaults returns o with every zero or negative field replaced by its
// default.
func (o Options) WithDefaults() Options {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = DefaultMaxLineBytes
	}
	return o
}

// OpenAppend opens path for appending (O_WRONLY|O_APPEND|O_CREATE, mode
// 0640), creating missing parent directories with mode 0750. The returned
// file is meant to be given to a child process as stdout or stderr; the
// caller may close its copy once the child has started.
func OpenAppend(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	return f, nil
}

// rotatedName returns the name of the i-th rotated file of path.
func rotatedName(path string, i int) string {
	return fmt.Sprintf("%s.%d", path, i)
}
