package agent

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/visorhq/visor/internal/testtime"
	"github.com/visorhq/visor/registry"
)

// The host status's unit tests run it on fakes of its own narrow
// interfaces (statusSession, systemLoad, liveCounter): no etcd.

// fakeSystem is a systemLoad with fixed figures or errors.
type fakeSystem struct {
	load, mem       float64
	loadErr, memErr error
}

func (f fakeSystem) load1() (float64, error)          { return f.load, f.loadErr }
func (f fakeSystem) memUsedPercent() (float64, error) { return f.mem, f.memErr }

// fakeLive is a liveCounter the test sets.
type fakeLive struct{ n atomic.Int64 }

func (f *fakeLive) liveCount() int { return int(f.n.Load()) }

// statusWrite is one UpdateHost a fakeStatusSession received.
type statusWrite struct {
	at   time.Time
	host registry.Host
}

// fakeStatusSession is a statusSession that hands each write to the test
// and returns only once the test acks it (with the error to return), so
// the test decides what happens between two writes.
type fakeStatusSession struct {
	writes chan statusWrite
	ack    chan error
}

func newFakeStatusSession() *fakeStatusSession {
	return &fakeStatusSession{writes: make(chan statusWrite), ack: make(chan error)}
}

func (f *fakeStatusSession) UpdateHost(ctx context.Context, h registry.Host) error {
	select {
	case f.writes <- statusWrite{at: time.Now(), host: h}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-f.ack:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// next waits for the next write.
func (f *fakeStatusSession) next(t *testing.T) statusWrite {
	t.Helper()
	select {
	case w := <-f.writes:
		return w
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("no host status write")
		return statusWrite{}
	}
}

func TestHostStatusRecord(t *testing.T) {
	base := registry.Host{ID: "h1", Addr: "198.51.100.7", Version: "v9", APIScheme: "http", Capacity: 5}
	for _, tc := range []struct {
		name     string
		httpAddr string
		system   fakeSystem
		live     int64
		wantAPI  string
		wantLoad registry.HostLoad
	}{
		{"figures", "127.0.0.1:4000", fakeSystem{load: 0.5, mem: 42}, 3,
			"127.0.0.1:4000", registry.HostLoad{Load1: 0.5, MemUsedPercent: 42, Instances: 3}},
		{"unspecified address is the host's", "0.0.0.0:4000", fakeSystem{load: 1}, 0,
			"198.51.100.7:4000", registry.HostLoad{Load1: 1}},
		{"unspecified v6 address is the host's", "[::]:4001", fakeSystem{}, 1,
			"198.51.100.7:4001", registry.HostLoad{Instances: 1}},
		{"no http api", "", fakeSystem{mem: 10}, 2,
			"", registry.HostLoad{MemUsedPercent: 10, Instances: 2}},
		{"unreadable figures are 0", "127.0.0.1:4000", fakeSystem{load: 7, mem: 8, loadErr: errors.New("no loadavg"), memErr: errors.New("no meminfo")}, 4,
			"127.0.0.1:4000", registry.HostLoad{Instances: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			live := &fakeLive{}
			live.n.Store(tc.live)
			h := &hostStatus{base: base, log: hclog.NewNullLogger(), httpAddr: func() string { return tc.httpAddr },
				system: tc.system, live: live}
			got := h.record()
			want := base
			want.APIAddr, want.Load = tc.wantAPI, tc.wantLoad
			if got.ID != want.ID || got.Addr != want.Addr || got.Version != want.Version || got.APIScheme != want.APIScheme ||
				got.Capacity != want.Capacity || got.APIAddr != want.APIAddr || got.Load != want.Load {
				t.Errorf("record() = %+v, want %+v", got, want)
			}
		})
	}
}

// TestHostStatusRun: the record is written an interval after run starts
// (registering wrote it just before), then an interval after each write
// ends, each time with fresh figures; a failed write is logged and the
// next still comes; run returns when its context ends.
func TestHostStatusRun(t *testing.T) {
	const interval = 50 * time.Millisecond
	logs := &logBuffer{}
	live := &fakeLive{}
	live.n.Store(1)
	h := &hostStatus{base: registry.Host{ID: "h1"}, interval: interval,
		log:      hclog.New(&hclog.LoggerOptions{Output: io.MultiWriter(testWriter{t}, logs)}),
		httpAddr: func() string { return "" }, system: fakeSystem{load: 0.25}, live: live}
	s := newFakeStatusSession()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	began := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.run(ctx, s)
	}()

	w := s.next(t)
	if d := w.at.Sub(began); d < interval {
		t.Errorf("first write %s after run began, want at least the interval %s", d, interval)
	}
	if w.host.ID != "h1" || w.host.Load != (registry.HostLoad{Load1: 0.25, Instances: 1}) {
		t.Errorf("first write %+v", w.host)
	}
	// Between two writes the live count changes: the next write has it.
	// The first write fails: logged, and the loop goes on.
	live.n.Store(3)
	ended := time.Now()
	s.ack <- errors.New("etcd refused the write")
	w2 := s.next(t)
	if d := w2.at.Sub(ended); d < interval {
		t.Errorf("second write %s after the first ended, want at least the interval %s", d, interval)
	}
	if w2.host.Load.Instances != 3 {
		t.Errorf("second write has %d instances, want the fresh count 3", w2.host.Load.Instances)
	}
	if n := logs.count("write host status", "etcd refused the write"); n != 1 {
		t.Errorf("failed write logged %d times, want 1", n)
	}
	s.ack <- nil

	cancel()
	select {
	case <-done:
	case <-time.After(testtime.Scaled(10 * time.Second)):
		t.Fatal("run did not return after its context ended")
	}
	if n := logs.count("write host status"); n != 1 {
		t.Errorf("%d host status warnings, want 1 (none for the ended context)", n)
	}
}
