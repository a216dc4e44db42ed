package discovery

import (
	"encoding/json"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// FuzzDecodeEndpoint feeds arbitrary stored endpoint records (key parts and
// value) to Store.decode: it must not panic, and an endpoint it accepts
// must pass Put's validation (encode) and decode again to the same
// encoding. (HTTP request bodies are fuzzed separately.)
//
//	go test -run '^$' -fuzz '^FuzzDecodeEndpoint$' -fuzztime 60s ./discovery/
func FuzzDecodeEndpoint(f *testing.F) {
	good, err := json.Marshal(Endpoint{Service: "web.web", Version: "v1", ID: "web-web-1a2b3c4d", Host: "h1", Addr: "198.51.100.7",
		Port: 5000, Meta: map[string]string{"zone": "a"}, Healthy: true, Source: SourceInstance,
		Registered: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("web.web", "web-web-1a2b3c4d", good)
	f.Add("db", "x1", []byte(`{"addr":"db.example.com","port":70000,"source":"external"}`))
	f.Add("db", "x1", []byte(`{"addr":"198.51.100.8","source":"external","registered":"9999-12-31T23:59:59-23:59"}`))
	s := NewStore(nil, "/visor/", nil)
	f.Fuzz(func(t *testing.T, service, id string, b []byte) {
		kv := &mvccpb.KeyValue{Key: []byte(s.key(service, id)), Value: b, ModRevision: 3}
		e, err := s.decode(kv)
		if err != nil {
			return
		}
		if err := e.validate(); err != nil {
			t.Fatalf("accepted an invalid endpoint: %v", err)
		}
		v, err := encode(e)
		if err != nil {
			t.Fatalf("accepted endpoint does not encode: %v", err)
		}
		kv.Value = []byte(v)
		e2, err := s.decode(kv)
		if err != nil {
			t.Fatalf("re-decode of %s: %v", v, err)
		}
		v2, err := encode(e2)
		if err != nil || v2 != v {
			t.Fatalf("round trip changed the endpoint:\n first %s\nsecond %s (%v)", v, v2, err)
		}
	})
}
