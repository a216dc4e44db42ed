package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/visorhq/visor/discovery"
)

func putEndpoints(t *testing.T, h *harness, eps ...discovery.Endpoint) *discovery.Store {
	t.Helper()
	s := discovery.NewStore(h.etcd.Client(t), h.prefix, nil)
	for _, ep := range eps {
		if err := s.Put(testContext(t), ep, 0); err != nil {
			t.Fatalf("put %s: %v", ep.ID, err)
		}
	}
	return s
}

func ep(id, version, addr string, port int, healthy bool) discovery.Endpoint {
	return discovery.Endpoint{Service: "web.api", Version: version, ID: id, Host: "h1", Addr: addr, Port: port, Healthy: healthy, Source: discovery.SourceInstance}
}

func TestLookup(t *testing.T) {
	h := newHarness(t)
	putEndpoints(t, h,
		ep("web-api-1", "1.2.0", "10.0.0.1", 8001, true),
		ep("web-api-2", "1.4.1", "10.0.0.2", 8002, false),
		ep("web-api-3", "2.0.0", "fd00::3", 8003, true),
	)
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"web.api"}, []string{"web-api-1", "web-api-2", "web-api-3"}},
		{[]string{"web.api@^1.2"}, []string{"web-api-1", "web-api-2"}},
		{[]string{"web.api@^1.2", "--healthy"}, []string{"web-api-1"}},
		{[]string{"web.api@>=1.3 <3"}, []string{"web-api-2", "web-api-3"}},
		{[]string{"web.api@2.0.0"}, []string{"web-api-3"}},
		{[]string{"nothing"}, []string{}},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			var got []map[string]any
			h.okJSON(&got, append([]string{"lookup"}, tc.args...)...)
			var ids []string
			for _, e := range got {
				ids = append(ids, e["id"].(string))
				checkFields(t, "lookup -o json", e, "service", "version", "id", "host", "addr", "port", "healthy", "source", "meta", "registered")
			}
			if strings.Join(ids, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("lookup %v = %v, want %v", tc.args, ids, tc.want)
			}
		})
	}
	table := h.ok("lookup", "web.api")
	for _, want := range []string{"SERVICE", "10.0.0.1:8001", "[fd00::3]:8003", "instance"} {
		if !strings.Contains(table, want) {
			t.Errorf("lookup table lacks %q:\n%s", want, table)
		}
	}
	h.fails(2, []string{"service name", "Web"}, "lookup", "Web")
	h.fails(2, []string{"version range", ">=foo"}, "lookup", "web.api@>=foo")
	h.fails(2, []string{"missing argument"}, "lookup")
	if res := runCLI("lookup", "--help"); res.code != 0 || !strings.Contains(res.stdout, "Usage:\n  visor lookup") {
		t.Errorf("lookup --help: %d %s", res.code, res.stdout)
	}
}

func TestLookupWatch(t *testing.T) {
	h := newHarness(t)
	s := putEndpoints(t, h, ep("web-api-1", "1.2.0", "10.0.0.1", 8001, true))
	f := h.follow("lookup", "web.api@^1", "--healthy", "-w", "-o", "json")
	f.waitOutput(`"id":"web-api-1"`)

	ctx := testContext(t)
	for _, e := range []discovery.Endpoint{
		ep("web-api-2", "1.3.0", "10.0.0.2", 8002, true),
		ep("web-api-9", "9.0.0", "10.0.0.9", 8009, true),  // filtered: version
		ep("web-api-3", "1.3.0", "10.0.0.3", 8003, false), // filtered: unhealthy
		ep("web-api-1", "1.2.0", "10.0.0.1", 8001, false), // turns unhealthy: free
	} {
		if err := s.Put(ctx, e, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "web.api", "web-api-2"); err != nil {
		t.Fatal(err)
	}
	f.waitOutput(`"type":"free","endpoint":{"service":"web.api","version":"1.3.0","id":"web-api-2"`)
	if code := f.stop(); code != 0 {
		t.Fatalf("lookup -w exit %d: %s", code, f.stderr.String())
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(f.stdout.String()), "\n") {
		var ev struct {
			Type     string `json:"type"`
			Endpoint struct {
				ID string `json:"id"`
			} `json:"endpoint"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, ev.Type+":"+ev.Endpoint.ID)
	}
	want := "register:web-api-1 register:web-api-2 free:web-api-1 free:web-api-2"
	if strings.Join(got, " ") != want {
		t.Fatalf("lookup -w events = %v, want %s", got, want)
	}
}
