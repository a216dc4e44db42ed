// Package logfile writes, rotates, tails and follows the stdout/stderr log
// files of supervised processes.
//
// # Design
//
// The child writes straight into its log file: the supervisor opens the file
// with [OpenAppend] and hands the descriptor to the child as stdout or
// stderr. There is no pipe and no per-process log helper, so output keeps
// flowing while the agent is down (processes outlive the agent) and costs the
// agent nothing per process.
//
// Because the agent does not sit in the write path, rotation works on the
// file in place, done by one [Rotator] goroutine for all files. The active
// file keeps its name; rotated files are path.1 (newest) … path.N (oldest,
// N = Options.MaxFiles); older ones are dropped. When a file grows past
// Options.MaxBytes the Rotator shifts path.1..N-1 up by one, copies the head
// of the active file into a new path.1 and then removes that head from the
// active file:
//
//   - collapse mode (Linux, ext4/xfs): the copied head, rounded down to the
//     file system block size, is removed with fallocate(FALLOC_FL_COLLAPSE_RANGE).
//     The kernel serialises this with O_APPEND writes, so no byte is lost and
//     none is duplicated. The cut is block-aligned, so a line may be split
//     between path.1 and the active file; [Tail] joins the two halves and
//     [Follow] streams across the cut, so readers still see whole lines.
//   - truncate mode (everything else): copy, then copy whatever was appended
//     meanwhile (bounded rounds), then ftruncate to zero. Bytes written between
//     the last copy round and the truncate are lost; that window is two system
//     calls wide. O_APPEND writers continue at the new end. The cut is wherever
//     the writer was, so the rotated file ends with whole lines whenever the
//     child writes whole lines (line-buffered output).
//
// [Rotator.Stats] counts the rotations by the mode they used, and
// [Rotator.RotateNow] rotates a file at once instead of at Run's next batch
// (tests force rotations with it).
//
// Every rotation is recorded in the extended attribute
// "user.visor.logfile.base": on the active file, the bytes removed from its
// head so far; on each rotated file, the logical offset of its first byte.
// [Follow] uses it to keep its exact position across rotations, and to pick
// up from the rotated files what it had not read yet. Without xattr support,
// Follow notices the shrink and restarts at the beginning of the file.
//
// Size checks cost nothing while files are quiet: the Rotator watches the
// directories with inotify (IN_MODIFY) and stats only the files that changed,
// at most one batch of events every 200 ms, plus a full rescan every
// [RescanInterval] as a safety net (and on inotify queue overflow). A full
// scan of 1000 files costs about 3.5 ms. Without inotify (other systems) it
// falls back to a one-second ticker.
//
// [Options.StreamMerged] does the same for several files at once (an
// instance's stdout and stderr), each line labelled with its file's name:
// the files carry no timestamps, so the history comes file by file, and
// followed lines come in the order they are read from the files, which is
// the order they were written give or take the few milliseconds between
// two inotify wake-ups.
//
// [Options.Stream] writes the last n lines to a writer: it reads backwards
// in fixed blocks to find where they start, then copies forward in fixed
// chunks, so its memory is the same for n = 10 and n = 100 000 (the agent's
// logs endpoint uses it; issue 14 measured 20 requests of 100 000 lines
// taking the agent from 87 MB to 1.69 GB when the lines were collected
// first). With follow it goes on like [Follow] from where the history
// ended. [Tail] collects the same lines into a slice, for small n. [Follow]
// streams appended data using inotify and survives rotation, truncation and
// rename-and-recreate. All cut lines longer than Options.MaxLineBytes and
// append [TruncatedMarker].
//
// This package must not import go.etcd.io/..., the registry, the agent, or
// the supervisor package itself (the supervisor imports it).
package logfile
