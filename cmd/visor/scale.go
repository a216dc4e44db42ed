package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/visorhq/visor/registry"
)

func newScaleCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scale APP REV PROC=N [PROC=N...]",
		Short: "set the desired number of instances of process types",
		Long: `scale writes the desired count and, in the same transaction, the start or
stop tickets for the difference; agents carry them out. With --wait it then
shows progress ("web/v1/web 3/5 running") until every process type has as
many running instances as desired, each running past its restart policy's
reset-after window (10 s by default; with a health check, running means its
first pass). It fails as soon as the outcome is known (exit 1, naming the
instance and why): an instance failed, one crash-loops (3 restarts, naming
its last exit code), or a start failed on every live host (an artifact 404,
a wrong sha256, a command not found), or an instance stays starting with
its health check failing past the check's deadline: (period + timeout) ×
failure threshold + 10 s (55 s for the defaults: period 10 s, timeout 5 s, threshold 3; raise the
threshold for a slow starter). If --wait-timeout passes first it fails with
exit code 3.

A count above what the live hosts can run (their capacity, less the slots
other instances use) is refused with the numbers, unless --force: then the
count is written, start tickets only for what fits now, and the rest waits
for capacity ("visor ps" and "visor ticket list" say why). A count above the
fleet's limit per process type (default 10000, "visor config max-scale")
is refused even with --force.`,
		RunE: runWith(e, runScale),
	}
	cmd.Flags().Bool("force", false, "scale above the fleet's capacity; what does not fit waits")
	cmd.Flags().Bool("wait", false, "wait until the running instances match the desired counts")
	cmd.Flags().Duration("wait-timeout", 5*time.Minute, "how long --wait waits before failing (exit code 3)")
	return cmd
}

// scaleArg is one PROC=N argument.
type scaleArg struct {
	proc string
	n    int
}

// parseScaleArgs parses PROC=N arguments. Counts must be non-negative
// integers and each process type may appear once.
func parseScaleArgs(args []string) ([]scaleArg, error) {
	out := make([]scaleArg, 0, len(args))
	seen := make(map[string]bool, len(args))
	for _, a := range args {
		proc, num, ok := strings.Cut(a, "=")
		if !ok || proc == "" {
			return nil, usageError("scale: %q: want PROC=N", a)
		}
		n, err := strconv.Atoi(num)
		if err != nil {
			return nil, usageError("scale: %q: count %q is not a number", a, num)
		}
		if n < 0 {
			return nil, usageError("scale: %q: count must not be negative", a)
		}
		if seen[proc] {
			return nil, usageError("scale: %q: process type %s given twice", a, proc)
		}
		seen[proc] = true
		out = append(out, scaleArg{proc: proc, n: n})
	}
	return out, nil
}

// scaleOut is the CLI's JSON form of one scale change: the desired count,
// the live instances and pending start tickets counted before the change,
// and the tickets the change created or cancelled.
type scaleOut struct {
	App       string   `json:"app"`
	Rev       string   `json:"rev"`
	Proc      string   `json:"proc"`
	Desired   int      `json:"desired"`
	Live      int      `json:"live"`
	Pending   int      `json:"pending"`
	Started   []string `json:"started"`
	Stopped   []string `json:"stopped"`
	Cancelled []string `json:"cancelled"`
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func runScale(ctx context.Context, e *env, args []string) error {
	if err := wantArgs(args, 3, -1, "APP REV PROC=N..."); err != nil {
		return err
	}
	app, rev := args[0], args[1]
	want, err := parseScaleArgs(args[2:])
	if err != nil {
		return err
	}
	wait := flagBool(e, "wait")
	timeout := flagValue[time.Duration](e, "wait-timeout")
	if wait && timeout <= 0 {
		return usageError("--wait-timeout %s: must be positive", timeout)
	}
	return withRegistry(ctx, e, func(ctx context.Context, r *registry.Registry) error {
		// With --wait, changes are followed from before the scale, so that a
		// start that fails at once is still seen.
		var from int64
		if wait {
			var err error
			if from, err = r.CurrentRevision(ctx); err != nil {
				return fmt.Errorf("scale: %w", err)
			}
		}
		if err := checkCapacity(ctx, e, r, app, rev, want, flagBool(e, "force")); err != nil {
			return err
		}
		out := make([]scaleOut, 0, len(want))
		for _, w := range want {
			res, err := r.Scale(ctx, app, rev, w.proc, w.n)
			if err != nil {
				return fmt.Errorf("scale %s/%s/%s to %d: %w", app, rev, w.proc, w.n, err)
			}
			if res.Waiting > 0 {
				fmt.Fprintf(e.stderr, "visor: %s/%s/%s: %d of %d instances wait: %s\n", app, rev, w.proc,
					res.Waiting, res.Desired, res.Reason)
			}
			out = append(out, scaleOut{
				App: app, Rev: rev, Proc: w.proc,
				Desired: res.Desired, Live: res.Live, Pending: res.Pending,
				Started: nonNil(res.Started), Stopped: nonNil(res.Stopped), Cancelled: nonNil(res.Cancelled),
			})
		}
		err := e.print(out, func(w io.Writer) {
			fmt.Fprintln(w, "PROC\tDESIRED\tLIVE\tPENDING\tSTART\tSTOP\tCANCELLED")
			for _, s := range out {
				fmt.Fprintf(w, "%s/%s/%s\t%d\t%d\t%d\t%d\t%d\t%d\n", s.App, s.Rev, s.Proc,
					s.Desired, s.Live, s.Pending, len(s.Started), len(s.Stopped), len(s.Cancelled))
			}
		})
		if err != nil || !wait {
			return err
		}
		progress := e.stdout
		if asJSON, _ := e.jsonOutput(); asJSON {
			// Keep stdout a single JSON document.
			progress = e.stderr
		}
		ours := make(map[string]bool)
		for _, s := range out {
			for _, id := range s.Started {
				ours[id] = true
			}
		}
		return waitScale(ctx, e, r, progress, app, rev, want, ours, from, timeout)
	})
}

// checkCapacity refuses a scale-up above what the live hosts can run
// (registry.Fleet), with the numbers, unless force. With no live host
// there is nothing to overload: the tickets wait for the first one.
func checkCapacity(ctx context.Context, e *env, r *registry.Registry, app, rev string, want []scaleArg, force bool) error {
	limit, err := r.MaxScale(ctx)
	if err != nil {
		return fmt.Errorf("scale: %w", err)
	}
	var f *registry.Fleet
	for _, w := range want {
		cur, err := r.CurrentScale(ctx, app, rev, w.proc)
		if err != nil {
			return fmt.Errorf("scale %s/%s/%s to %d: %w", app, rev, w.proc, w.n, err)
		}
		if w.n <= cur {
			continue
		}
		if f == nil {
			fl, err := r.Fleet(ctx)
			if err != nil {
				return fmt.Errorf("scale: read the fleet's capacity: %w", err)
			}
			f = &fl
		}
		room := f.For(app, rev, w.proc)
		over := ""
		if w.n > limit {
			// Refused even with --force, by the registry; say both.
			over = fmt.Sprintf("; %d is also above the fleet's limit of %d per process type (visor config max-scale)", w.n, limit)
		}
		switch {
		case f.Hosts == 0, room < 0, w.n <= room:
			// No live host: nothing to overload; the tickets wait for one.
		case force && over == "":
			fmt.Fprintf(e.stderr, "visor: --force: %s/%s/%s to %d is above the fleet's capacity of %d for it; the rest waits\n",
				app, rev, w.proc, w.n, room)
		default:
			if over != "" {
				return fmt.Errorf("scale %s/%s/%s to %d: %w: %s, %d slots, %d taken by other instances: room for %d%s",
					app, rev, w.proc, w.n, registry.ErrOverCapacity, hostCount(f.Hosts), f.Slots, f.Slots-room, room, over)
			}
			return fmt.Errorf("scale %s/%s/%s to %d: %w: %s, %d slots, %d taken by other instances: room for %d (--force scales anyway; what does not fit waits)",
				app, rev, w.proc, w.n, registry.ErrOverCapacity, hostCount(f.Hosts), f.Slots, f.Slots-room, room)
		}
	}
	return nil
}

func hostCount(n int) string {
	if n == 1 {
		return "1 host"
	}
	return strconv.Itoa(n) + " hosts"
}

// scaleWaiter tracks the running instances of the process types of one
// app revision, and the instances that failed while it waited.
type scaleWaiter struct {
	app, rev string
	want     []scaleArg
	// state is the last known state of each instance of app/rev whose
	// process type is in want.
	state  map[string]registry.InstanceState
	procOf map[string]string
	// modRev is the etcd revision of the last change applied per instance;
	// older changes (replayed by the watch) are ignored.
	modRev map[string]int64
	// failed counts, per process type, the instances seen entering the
	// failed state during the wait; reason is the last failure's reason.
	failed map[string]int
	reason map[string]string
	// attempts counts, per process type, the start attempts that a host
	// gave up during the wait (the ticket goes back for another host).
	attempts map[string]int
	// ours holds the start tickets this scale created: their instances'
	// failures count even if they happened before the wait began.
	ours map[string]bool
	// printed is the last progress line printed per process type.
	printed map[string]string
	// waiting is, per process type, why instances wait for capacity
	// (registry.ScaleStatus), "" when none does.
	waiting map[string]string
	// stable is, per process type, how long an instance must run to
	// count; since is when each running instance was seen starting to run.
	stable map[string]time.Duration
	since  map[string]time.Time
	// healthDeadline is, per process type, how long an instance may start
	// with a failing health check (0: no check); starting is when each
	// starting instance started, health its check's last error.
	healthDeadline map[string]time.Duration
	starting       map[string]time.Time
	health         map[string]string
	// fail is set once the outcome is known to be a failure: an instance
	// failed, crash-loops, or a start failed on every live host.
	fail error
}

// readWaiting refreshes w.waiting from the registry's scale statuses.
func (w *scaleWaiter) readWaiting(ctx context.Context, r *registry.Registry) error {
	st, err := r.ScaleStatuses(ctx, w.app)
	if err != nil && !errors.Is(err, registry.ErrCorrupt) {
		return fmt.Errorf("wait for scale: %w", err)
	}
	clear(w.waiting)
	for _, s := range st {
		if s.Rev == w.rev && w.wanted(s.Proc) {
			w.waiting[s.Proc] = fmt.Sprintf("%d waiting: %s", s.Waiting, s.Reason)
		}
	}
	return nil
}

func (w *scaleWaiter) wanted(proc string) bool {
	for _, a := range w.want {
		if a.proc == proc {
			return true
		}
	}
	return false
}

// observe records an instance's state as of etcd revision rev. during
// reports whether the change happened during the wait (an event), not
// before it (the initial list).
func (w *scaleWaiter) observe(inst registry.Instance, rev int64, during bool) {
	if inst.App != w.app || inst.Rev != w.rev || !w.wanted(inst.Proc) || rev <= w.modRev[inst.ID] {
		return
	}
	w.modRev[inst.ID] = rev
	if (during || w.ours[inst.Ticket]) && inst.State == registry.InstanceFailed && w.state[inst.ID] != registry.InstanceFailed {
		w.failed[inst.Proc]++
		w.reason[inst.Proc] = inst.Reason
		if w.fail == nil {
			w.fail = fmt.Errorf("%s/%s/%s: instance %s failed: %s: %w", inst.App, inst.Rev, inst.Proc, inst.ID, dash(inst.Reason), errWaitFailed)
		}
	}
	if err := crashLoop(inst); err != nil && w.fail == nil {
		w.fail = err
	}
	w.noteSince(inst, time.Now())
	w.noteHealth(inst, time.Now())
	w.state[inst.ID] = inst.State
	w.procOf[inst.ID] = inst.Proc
}

// forget drops a deleted instance; rev is the revision of the deletion,
// which is remembered so that replayed older changes do not revive it.
func (w *scaleWaiter) forget(id string, rev int64) {
	if rev <= w.modRev[id] {
		return
	}
	w.modRev[id] = rev
	delete(w.state, id)
	delete(w.procOf, id)
	delete(w.since, id)
	delete(w.starting, id)
	delete(w.health, id)
}

func (w *scaleWaiter) running() map[string]int {
	n := make(map[string]int, len(w.want))
	for id, st := range w.state {
		if st == registry.InstanceRunning {
			n[w.procOf[id]]++
		}
	}
	return n
}

// progress is the progress line of one process type, e.g.
// "web/v1/web 3/5 running" or "web/v1/web 0/5 running (2 failed: reason)".
func (w *scaleWaiter) progress(a scaleArg, running int) string {
	line := fmt.Sprintf("%s/%s/%s %d/%d running", w.app, w.rev, a.proc, running, a.n)
	var notes []string
	if n := w.attempts[a.proc]; n == 1 {
		notes = append(notes, "1 start attempt failed")
	} else if n > 1 {
		notes = append(notes, fmt.Sprintf("%d start attempts failed", n))
	}
	if n := w.failed[a.proc]; n > 0 {
		notes = append(notes, fmt.Sprintf("%d failed", n))
	}
	if why := w.waiting[a.proc]; why != "" {
		notes = append(notes, why)
	}
	if len(notes) == 0 {
		return line
	}
	line += " (" + strings.Join(notes, ", ")
	if r := w.reason[a.proc]; r != "" {
		line += ": " + r
	}
	return line + ")"
}

// report prints the progress line of every process type whose line changed
// since the last report, and reports whether every process type has
// reached its desired count of running instances, each running past its
// stable window at now; next is when the next running instance becomes
// stable (zero if none).
func (w *scaleWaiter) report(out io.Writer, now time.Time) (done bool, next time.Time) {
	n := w.running()
	stable, next := w.stableRunning(now)
	done = true
	for _, a := range w.want {
		line := w.progress(a, n[a.proc])
		if w.printed[a.proc] != line {
			fmt.Fprintln(out, line)
			w.printed[a.proc] = line
		}
		done = done && n[a.proc] == a.n && stable[a.proc] == a.n
	}
	return done, next
}

func (w *scaleWaiter) summary() string {
	n := w.running()
	parts := make([]string, 0, len(w.want))
	for _, a := range w.want {
		parts = append(parts, w.progress(a, n[a.proc]))
	}
	return strings.Join(parts, ", ")
}

// waitScale follows instance events of app/rev until every process type in
// want has exactly its desired number of running instances, or timeout
// passes. It lists the instances, then watches from revision from+1 (read
// before the scale), so no change is missed; changes older than an
// instance's listed state are ignored. ours are the start tickets the scale
// created.
func waitScale(ctx context.Context, e *env, r *registry.Registry, out io.Writer, app, rev string, want []scaleArg, ours map[string]bool, from int64, timeout time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.NewTimer(timeout)
	defer timer.Stop()

	insts, err := r.AppInstances(ctx, app)
	if err := e.skipped(err); err != nil {
		return fmt.Errorf("wait for scale: %w", err)
	}
	w := &scaleWaiter{
		app: app, rev: rev, want: want,
		state:    make(map[string]registry.InstanceState),
		procOf:   make(map[string]string),
		modRev:   make(map[string]int64),
		failed:   make(map[string]int),
		reason:   make(map[string]string),
		attempts: make(map[string]int),
		ours:     ours,
		printed:  make(map[string]string),
		waiting:  make(map[string]string),
		stable:   make(map[string]time.Duration),
		since:    make(map[string]time.Time),

		healthDeadline: make(map[string]time.Duration),
		starting:       make(map[string]time.Time),
		health:         make(map[string]string),
	}
	if err := w.readWaiting(ctx, r); err != nil {
		return err
	}
	w.readStable(ctx, r)
	for _, inst := range insts {
		w.observe(inst, inst.ModRevision, false)
	}
	events := r.WatchEvents(ctx, from+1)
	defer drain(cancel, events)
	settle := time.NewTimer(time.Hour)
	defer settle.Stop()
	for {
		now := time.Now()
		done, next := w.report(out, now)
		if w.fail == nil {
			var due time.Time
			w.fail, due = w.healthOverdue(now)
			if !due.IsZero() && (next.IsZero() || due.Before(next)) {
				next = due
			}
		}
		switch {
		case w.fail != nil:
			return w.fail
		case done:
			return nil
		case !next.IsZero():
			settle.Reset(time.Until(next))
		}
		select {
		case <-settle.C:
		case <-timer.C:
			return waitTimeout("scale: timed out after %s waiting: %s", timeout, w.summary())
		case ev, ok := <-events:
			if !ok {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("wait for scale: %w", err)
				}
				return errors.New("wait for scale: registry watch ended")
			}
			if err := w.apply(ctx, r, ev); err != nil {
				return err
			}
		}
	}
}

// apply updates the waiter from one registry event.
func (w *scaleWaiter) apply(ctx context.Context, r *registry.Registry, ev registry.Event) error {
	if ev.Type == registry.ScaleWaiting && ev.App == w.app {
		return w.readWaiting(ctx, r)
	}
	if ev.Err != nil || ev.Instance == "" || (ev.App != "" && ev.App != w.app) {
		return nil
	}
	switch ev.Type {
	case registry.TicketReleased:
		// A host gave up a start; the ticket records why.
		if ev.App != w.app || ev.Rev != w.rev || !w.wanted(ev.Proc) || ev.Ticket == "" {
			return nil
		}
		w.attempts[ev.Proc]++
		t, err := r.Ticket(ctx, ev.Ticket)
		switch {
		case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrCorrupt):
			// Gone, or unreadable (visor doctor names it): no reason.
		case err != nil:
			return fmt.Errorf("wait for scale: ticket %s: %w", ev.Ticket, err)
		case len(t.Reasons) > 0:
			w.reason[ev.Proc] = t.Reasons[len(t.Reasons)-1]
		}
		if err == nil && w.fail == nil {
			fail, err := failedEverywhere(ctx, r, t)
			if err != nil {
				return err
			}
			w.fail = fail
		}
	case registry.InstanceDeleted:
		w.forget(ev.Instance, ev.Revision)
	case registry.InstanceChanged:
		if ev.State != "" && ev.State != registry.InstanceFailed && ev.State != registry.InstanceBackoff && ev.State != registry.InstanceStarting &&
			ev.App != "" && ev.Rev != "" && ev.Proc != "" {
			w.observe(registry.Instance{ID: ev.Instance, App: ev.App, Rev: ev.Rev, Proc: ev.Proc, State: ev.State}, ev.Revision, true)
			return nil
		}
		// Read the record: the event lacks its details, or it failed or
		// backs off, and the reason and restarts are worth showing, or it
		// starts, and its health check's result counts.
		inst, err := r.Instance(ctx, ev.Instance)
		switch {
		case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrCorrupt):
			// Gone, or no longer readable: not running as far as
			// anyone can tell.
			w.forget(ev.Instance, ev.Revision)
		case err != nil:
			return fmt.Errorf("wait for scale: instance %s: %w", ev.Instance, err)
		default:
			w.observe(inst, inst.ModRevision, true)
		}
	}
	return nil
}
