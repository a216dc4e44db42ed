package registry

import (
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Fuzz targets for the decoder of every stored record kind. Each decodes
// arbitrary bytes (and names from the key) without panicking; when it
// accepts, the value satisfies the writers' validation, encodes (encode
// panics on a value json cannot marshal, such as a year past 9999), and
// the encoding decodes to the same value (compared by its encoding).
// Run one with
//
//	go test -run '^$' -fuzz '^FuzzDecodeInstance$' -fuzztime 60s ./registry/
//
// Findings go to testdata/fuzz/<target>/ and are replayed by go test.

var fuzzTime = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

// roundTrip checks that v, as decoded, encodes, and that its encoding
// decodes (with dec) to a value of the same encoding.
func roundTrip[T any](t *testing.T, v T, dec func([]byte) (T, error)) {
	t.Helper()
	b := encode(v)
	v2, err := dec([]byte(b))
	if err != nil {
		t.Fatalf("re-decode of %s: %v", b, err)
	}
	if b2 := encode(v2); b2 != b {
		t.Fatalf("round trip changed the value:\n first %s\nsecond %s", b, b2)
	}
}

func fkv(key string, v []byte) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte("/visor/" + key), Value: v, ModRevision: 7}
}

func FuzzDecodeApp(f *testing.F) {
	f.Add("web", []byte(encode(App{Name: "web", RepoURL: "https://example.com/web.git", Stack: "go", Created: fuzzTime})))
	f.Add("web", []byte(`{"created":"9999-12-31T23:59:59-23:59"}`))
	f.Add("Web", []byte(`{}`))
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		dec := func(b []byte) (App, error) { return decodeApp(b, []byte("/visor/apps/"+name), name, 7) }
		a, err := dec(b)
		if err != nil {
			return
		}
		if err := validName("app name", a.Name); err != nil {
			t.Fatalf("accepted %q: %v", name, err)
		}
		roundTrip(t, a, dec)
	})
}

func FuzzDecodeRevision(f *testing.F) {
	f.Add("v1", []byte(encode(Revision{Name: "v1", Dir: "/srv/web", Created: fuzzTime})))
	f.Add("v2", []byte(encode(Revision{Name: "v2", ArtifactURL: "https://example.com/a.tar.gz", SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Created: fuzzTime})))
	f.Add("v3", []byte(`{"artifact_url":"file:///a.tar.gz","sha256":"00"}`))
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		dec := func(b []byte) (Revision, error) {
			return decodeRevision([]byte("/visor/apps/web/revs/"+name), b, 7, "web", name)
		}
		rv, err := dec(b)
		if err != nil {
			return
		}
		if err := validRevision(rv); err != nil {
			t.Fatalf("accepted an invalid revision: %v", err)
		}
		roundTrip(t, rv, dec)
	})
}

func FuzzDecodeProcType(f *testing.F) {
	f.Add("worker", []byte(encode(ProcType{Name: "worker", Command: "exec ./worker -v", Env: map[string]string{"A": "1"},
		Restart: RestartPolicy{Policy: "on-failure", InitialDelay: Duration(time.Second), MaxRestarts: 3}, StopSignal: "INT",
		StopTimeout: Duration(5 * time.Second), Health: &HealthCheck{Type: "http", Path: "/healthz", Period: Duration(time.Second)},
		Limits: Limits{MemoryBytes: 1 << 30, CPUMillis: 500, Pids: 64}, User: "app", Group: "app"})))
	f.Add("web", []byte(`{"stop_signal":"sigterm","health":{"type":"exec","command":["true"]},"restart":{"initial_delay":1000}}`))
	f.Add("web", []byte(`{"env":{"A=B":"1"}}`))
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		dec := func(b []byte) (ProcType, error) {
			return decodeProc([]byte("/visor/apps/web/procs/"+name), b, 7, "web", name)
		}
		p, err := dec(b)
		if err != nil {
			return
		}
		before := encode(p)
		if err := validProcType(&p); err != nil {
			t.Fatalf("accepted an invalid process type: %v", err)
		}
		if after := encode(p); after != before {
			t.Fatalf("validation changed an accepted value:\n%s\n%s", before, after)
		}
		roundTrip(t, p, dec)
	})
}

func FuzzDecodeScale(f *testing.F) {
	for _, s := range []string{"0", "3", "-1", "+4", "007", "1e3", " 1", "9223372036854775808"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		key := []byte("/visor/apps/web/scale/v1/worker")
		n, err := decodeScale(key, b)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("accepted negative count %d", n)
		}
		n2, err := decodeScale(key, []byte(encodeScale(n)))
		if err != nil || n2 != n {
			t.Fatalf("round trip of %d: %d, %v", n, n2, err)
		}
	})
}

// encodeScale is how Scale stores a count.
func encodeScale(n int) string { return encode(n) }

func FuzzDecodeEnv(f *testing.F) {
	f.Add("DATABASE_URL", []byte("postgres://db/web"))
	f.Add("PATH=/tmp:", []byte("x"))
	f.Add("A", []byte("a\x00b"))
	f.Fuzz(func(t *testing.T, k string, b []byte) {
		key := []byte("/visor/apps/web/env/" + k)
		v, err := decodeEnv(key, "web", k, b)
		if err != nil {
			return
		}
		if err := validEnv(k, v); err != nil {
			t.Fatalf("accepted %q=%q: %v", k, v, err)
		}
		// The agent passes k=v to a process: it must name exactly k.
		for i := 0; i < len(k); i++ {
			if k[i] == '=' || k[i] == 0 {
				t.Fatalf("accepted key %q", k)
			}
		}
		if v2, err := decodeEnv(key, "web", k, []byte(v)); err != nil || v2 != v {
			t.Fatalf("round trip: %q, %v", v2, err)
		}
	})
}

func FuzzDecodeTicket(f *testing.F) {
	f.Add("0000000000000001abcd", []byte(encode(Ticket{Op: TicketStart, App: "web", Rev: "v1", Proc: "worker", Instance: "web-worker-1a2b3c4d",
		MaxAttempts: 3, Attempts: 1, FailedHosts: []string{"h1"}, Reasons: []string{"no such file"}, Created: fuzzTime})))
	f.Add("0000000000000002abcd", []byte(encode(Ticket{Op: TicketSignal, App: "web", Rev: "v1", Proc: "worker", Instance: "web-worker-1a2b3c4d",
		Host: "h1", Signal: "usr1", Created: fuzzTime})))
	f.Add("0000000000000003abcd", []byte(`{"op":"explode"}`))
	f.Fuzz(func(t *testing.T, id string, b []byte) {
		dec := func(b []byte) (Ticket, error) { return decodeTicket(fkv("tickets/"+id, b), id) }
		tk, err := dec(b)
		if err != nil {
			return
		}
		before := encode(tk)
		if err := validTicket(&tk); err != nil {
			t.Fatalf("accepted an invalid ticket: %v", err)
		}
		if after := encode(tk); after != before {
			t.Fatalf("validation changed an accepted value:\n%s\n%s", before, after)
		}
		roundTrip(t, tk, dec)
	})
}

func FuzzDecodeClaim(f *testing.F) {
	f.Add([]byte("h1"))
	f.Add([]byte("../h1"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		key := []byte("/visor/claims/0001")
		h, err := decodeClaim(key, b)
		if err != nil {
			return
		}
		if err := validName("host", h); err != nil {
			t.Fatalf("accepted holder %q: %v", h, err)
		}
		if h2, err := decodeClaim(key, []byte(h)); err != nil || h2 != h {
			t.Fatalf("round trip: %q, %v", h2, err)
		}
	})
}

func FuzzDecodeInstance(f *testing.F) {
	code := 1
	f.Add("web-worker-1a2b3c4d", []byte(encode(Instance{App: "web", Rev: "v1", Proc: "worker", Host: "h1", Port: 5000, PID: 42,
		PIDStart: 123456, State: InstanceRunning, Since: fuzzTime, Restarts: map[string]int{"fail": 2}, ExitCode: &code,
		Signal: "TERM", Reason: "crashed", Ticket: "0001", StopTicket: "0002", ReplacedBy: "web-worker-2", Created: fuzzTime})))
	f.Add("web-worker-1", []byte(`{"app":"web","rev":"v1","proc":"worker","state":"pending","since":"2026-01-02T03:04:05+01:00"}`))
	f.Add("web-worker-1", []byte(`{"state":"dancing"}`))
	f.Fuzz(func(t *testing.T, id string, b []byte) {
		dec := func(b []byte) (Instance, error) { return decodeInstance(fkv("instances/"+id, b), id) }
		in, err := dec(b)
		if err != nil {
			return
		}
		if err := validInstance(in); err != nil {
			t.Fatalf("accepted an invalid instance: %v", err)
		}
		if err := lostKeysValid(in); err != nil {
			t.Fatalf("accepted an instance whose keys MarkAllLost refuses: %v", err)
		}
		roundTrip(t, in, dec)
	})
}

func FuzzDecodeHost(f *testing.F) {
	f.Add("h1", []byte(encode(Host{ID: "h1", Addr: "198.51.100.7", Labels: map[string]string{"zone": "a"}, Capacity: 10, Version: "1.0",
		APIAddr: "198.51.100.7:7070", Started: fuzzTime, Updated: fuzzTime, Load: HostLoad{Load1: 0.5, MemUsedPercent: 40, Instances: 3}})))
	f.Add("h1", []byte(`{"load":{"load1":1e308}}`))
	f.Add("x", []byte(`garbage`))
	f.Fuzz(func(t *testing.T, id string, b []byte) {
		dec := func(b []byte) (Host, error) { return decodeHost(fkv("hosts/"+id, b), id) }
		h, err := dec(b)
		if err != nil {
			return
		}
		if err := validName("host", h.ID); err != nil || h.Capacity < 0 {
			t.Fatalf("accepted host %q capacity %d: %v", h.ID, h.Capacity, err)
		}
		roundTrip(t, h, dec)
	})
}

func FuzzDecodeDrain(f *testing.F) {
	f.Add("h1", []byte(encode(Drain{Host: "h1", Since: fuzzTime, Deadline: fuzzTime.Add(time.Minute)})))
	f.Add("h1", []byte(`{"since":"yesterday"}`))
	f.Fuzz(func(t *testing.T, host string, b []byte) {
		dec := func(b []byte) (Drain, error) { return decodeDrain(fkv("drains/"+host, b), host) }
		d, err := dec(b)
		if err != nil {
			return
		}
		if err := validName("host", d.Host); err != nil {
			t.Fatalf("accepted drain of %q: %v", d.Host, err)
		}
		roundTrip(t, d, dec)
	})
}

// FuzzCheckKV feeds arbitrary keys and values to the classifier of `visor
// doctor`: it must never panic, and a record it passes must be one the
// listings would return.
func FuzzCheckKV(f *testing.F) {
	for _, k := range []string{"apps/web", "apps/web/env/A", "apps/web/revs/v1", "apps/web/procs/worker", "apps/web/scale/v1/worker",
		"tickets/0001", "claims/0001", "instances/web-worker-1", "hosts/h1", "hosts/h1/instances/web-worker-1", "drains/h1",
		"apps//scale//", "hosts/h1/instances", "leader/1"} {
		f.Add(k, []byte(`{}`))
	}
	r := New(nil, "/visor/", nil)
	f.Fuzz(func(t *testing.T, key string, b []byte) {
		_ = r.checkKV(fkv(key, b))
	})
}
