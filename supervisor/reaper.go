package supervisor

// watch is one process handle registered with the reaper.
type watch struct {
	in  *instance
	gen uint64 // the instance's spawn generation the handle belongs to
	fd  int    // the handle: a pidfd on Linux, the pid on darwin
}
