package agent

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/visorhq/visor/internal/proctest"
	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
	"github.com/visorhq/visor/supervisor"
)

// runOne starts an agent of host-a, scales demo/web to 1 and waits until the
// instance runs and its start ticket is done, so that the state writer has
// nothing pending for it.
func runOne(t *testing.T, f *fixture) (*testAgent, registry.Instance) {
	t.Helper()
	a := f.startAgent(t, "host-a", t.TempDir(), func(c *Config) { c.StopOnExit = true; c.DisableReconciler = true })
	_, err := f.reg.Scale(f.ctx, "demo", "v1", "web", 1)
	must(t, err)
	var in registry.Instance
	for _, only := range f.waitRunning(t, "demo", 1) {
		in = only
	}
	proctest.WaitFor(t, 10*time.Second, "start ticket done", func() bool {
		ts, err := f.reg.Tickets(f.ctx)
		return err == nil && len(ts) == 0
	})
	return a, in
}

// instanceKey is the etcd key of instance id's record.
func (f *fixture) instanceKey(id string) string { return f.reg.Prefix() + "instances/" + id }

// markExited writes instance id's record as exited with reason, by hand
// (as another party would), keeping its other fields as stored.
func (f *fixture) markExited(t *testing.T, id, reason string) {
	t.Helper()
	cli := f.reg.Client()
	resp, err := cli.Get(f.ctx, f.instanceKey(id))
	must(t, err)
	var rec map[string]any
	must(t, json.Unmarshal(resp.Kvs[0].Value, &rec))
	rec["state"], rec["reason"] = string(registry.InstanceExited), reason
	b, err := json.Marshal(rec)
	must(t, err)
	_, err = cli.Put(f.ctx, f.instanceKey(id), string(b))
	must(t, err)
}

// stopLocally stops instance id through the supervisor alone (no ticket)
// and waits until the agent has been told of every state change.
func stopLocally(t *testing.T, a *testAgent, id string) {
	t.Helper()
	st, err := a.sup.Stop(context.Background(), id)
	must(t, err)
	if !st.State.Terminal() {
		t.Fatalf("after Stop: state %s", st.State)
	}
	must(t, a.sup.Notified(context.Background()))
}

// flushBounded runs flushOne with a caller context far longer than the
// writer's own bound and returns how long it took.
func flushBounded(a *testAgent, id string) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), testtime.Scaled(20*time.Second))
	defer cancel()
	began := time.Now()
	a.writer.flushOne(ctx, id)
	return time.Since(began)
}

// TestWriterRetriesFailedWriteAfterBackoff: a state write that fails for a
// reason that passes (here the instance record cannot be decoded until it
// is repaired) is tried again by the writer's backoff timer and lands with
// no further state change and no session change. Meanwhile flushOne, as a
// stop or restart ticket calls it, gives up after its own bound instead of
// blocking its executor.
func TestWriterRetriesFailedWriteAfterBackoff(t *testing.T) {
	f := newFixture(t)
	a, in := runOne(t, f)
	cli := f.reg.Client()
	key := f.instanceKey(in.ID)
	resp, err := cli.Get(f.ctx, key)
	must(t, err)
	if len(resp.Kvs) != 1 {
		t.Fatalf("instance record %s: %d keys", key, len(resp.Kvs))
	}
	good := string(resp.Kvs[0].Value)
	_, err = cli.Put(f.ctx, key, "{not json")
	must(t, err)

	stopLocally(t, a, in.ID)
	// The exited state is the last change the instance will ever have; it
	// waits for a write (neither queued nor being written) that cannot land
	// while the record is broken.
	w := a.writer
	proctest.WaitFor(t, 10*time.Second, "the exited state waiting after a failed write", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.latest[in.ID].State == supervisor.StateExited && w.dirty[in.ID] && !w.busy[in.ID] && !w.queued[in.ID]
	})

	if d := flushBounded(a, in.ID); d > flushOneTimeout+testtime.Scaled(3*time.Second) {
		t.Errorf("flushOne of a write that keeps failing returned after %v, want about %v", d, flushOneTimeout)
	}
	if p, _ := w.pending(in.ID); !p {
		t.Fatalf("the exited state was written while the record was broken")
	}

	_, err = cli.Put(f.ctx, key, good)
	must(t, err)
	proctest.WaitFor(t, 3*writeRetryMax+5*time.Second, "the exited state written by a retry", func() bool {
		got, err := f.reg.Instance(f.ctx, in.ID)
		return err == nil && got.State == registry.InstanceExited
	})
	// The record is in etcd before the worker finishes the write.
	proctest.WaitFor(t, 5*time.Second, "the write finished", func() bool {
		p, _ := w.pending(in.ID)
		return !p
	})
	w.mu.Lock()
	_, waiting := w.retryAt[in.ID]
	_, delay := w.retryDelay[in.ID]
	w.mu.Unlock()
	if waiting || delay {
		t.Errorf("backoff not reset by the successful write (waiting %v, delay kept %v)", waiting, delay)
	}
}

// TestWriterDropsWriteRefusedAsTransition: a write the registry refuses as
// an invalid transition (the stored record is terminal already) is dropped
// after the record is read again, not retried forever: flushOne returns at
// once and the stored record is left as it is.
func TestWriterDropsWriteRefusedAsTransition(t *testing.T) {
	f := newFixture(t)
	a, in := runOne(t, f)
	const reason = "recorded exited by hand"
	f.markExited(t, in.ID, reason)

	// stopping and exited are both refused after exited. (A write of
	// running refused first has the writer stop it itself.)
	if _, err := a.sup.Stop(context.Background(), in.ID); err != nil && !errors.Is(err, supervisor.ErrNotFound) {
		t.Fatal(err)
	}
	must(t, a.sup.Notified(context.Background()))
	// Retrying would last until flushBounded's 20 s (scaled) context ends.
	if d := flushBounded(a, in.ID); d > testtime.Scaled(10*time.Second) {
		t.Errorf("flushOne of a refused write returned after %v", d)
	}
	if p, _ := a.writer.pending(in.ID); p {
		t.Errorf("refused write still pending")
	}
	a.writer.mu.Lock()
	_, waiting := a.writer.retryAt[in.ID]
	a.writer.mu.Unlock()
	if waiting {
		t.Errorf("refused write scheduled for a retry")
	}
	got, err := f.reg.Instance(f.ctx, in.ID)
	must(t, err)
	if got.State != registry.InstanceExited || got.Reason != reason {
		t.Errorf("stored record changed: %+v", got)
	}
}

// TestWriterStopsInstanceTheRegistryEnded: when the registry has ended an
// instance (its record terminal) that still runs here, the refused write
// stops the local copy instead of leaving it running, uncounted.
func TestWriterStopsInstanceTheRegistryEnded(t *testing.T) {
	f := newFixture(t)
	a, in := runOne(t, f)
	f.markExited(t, in.ID, "stopped elsewhere")

	a.writer.touch(in.ID) // the next write of "running" is refused
	proctest.WaitFor(t, 20*time.Second, "the local copy stopped", func() bool { return !proctest.Alive(in.PID) })
	got, err := f.reg.Instance(f.ctx, in.ID)
	must(t, err)
	if got.State != registry.InstanceExited || got.Reason != "stopped elsewhere" {
		t.Errorf("stored record changed: %s (%s)", got.State, got.Reason)
	}
}
