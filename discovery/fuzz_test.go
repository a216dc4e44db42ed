package discovery

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// FuzzDecodeRegister feeds arbitrary paths and bodies to the decoding of
// a registration request and the Registrar's checks, without etcd. It
// asserts: no panic; every error is classed (ErrInvalid or ErrTooLarge);
// what is accepted has a valid name, a port in range, a TTL in range, and
// round-trips through the stored encoding unchanged in the fields a client
// sets. It also fuzzes the watch's event ids and the lookup's version
// queries, which come from the same requests.
func FuzzDecodeRegister(f *testing.F) {
	f.Add("svc", `{"port":80,"address":"192.0.2.1"}`, "1-0", "^1.2")
	f.Add("web.api@1.2.3", `{"port":8080,"meta":{"zone":"a"},"ttl":"30s"}`, "7-3", ">=1.0 <2")
	f.Add("svc@1", `{"port":1,"version":"1","ttl":30}`, "x", "1.x || 2")
	f.Add("a", `{"port":65535,"address":"db-1.example.com","ttl":-1}`, "", "")
	f.Add("..", `{"port":80} {}`, "0-0", "~1")
	f.Add("svc", `{"port":80,"meta":{"a b":"c"}}`, "9223372036854775807-1", "1 .2")
	f.Add("svc", strings.Repeat("[", 100), "1-", "=")
	reg := NewRegistrar(nil, 0, RegistrarConfig{Host: "h1", MaxMetaBytes: 512})
	f.Fuzz(func(t *testing.T, name, body, eventID, query string) {
		r := httptest.NewRequest(http.MethodPost, "/v1/services/x", strings.NewReader(body))
		r.SetPathValue("name", name)
		r.RemoteAddr = "192.0.2.9:4000"
		e, ttl, err := decodeRegister(nil, r, int64(reg.cfg.MaxMetaBytes)+4096)
		if err == nil {
			e, ttl, err = reg.check(e, ttl)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("unclassed error %v for %q %q", err, name, body)
			}
		} else {
			if ValidateName(e.Service) != nil || e.Port < 1 || e.Port > 65535 || ttl < MinTTL || ttl > MaxTTL {
				t.Fatalf("accepted invalid registration %+v ttl %v", e, ttl)
			}
			val, err := encode(e)
			if err != nil {
				if errors.Is(err, ErrTooLarge) {
					return
				}
				t.Fatalf("accepted registration %+v does not encode: %v", e, err)
			}
			s := NewStore(nil, "/p/", nil)
			got, err := s.decode(&mvccpb.KeyValue{Key: []byte(s.key(e.Service, e.ID)), Value: []byte(val)})
			if err != nil {
				t.Fatalf("stored registration does not decode: %v", err)
			}
			a, _ := json.Marshal([]any{e.Service, e.ID, e.Version, e.Addr, e.Port, e.Meta, e.Source})
			b, _ := json.Marshal([]any{got.Service, got.ID, got.Version, got.Addr, got.Port, got.Meta, got.Source})
			if string(a) != string(b) {
				t.Fatalf("round trip changed the registration: %s -> %s", a, b)
			}
		}

		if rev, idx, err := ParseEventID(eventID); err == nil {
			if rev < 1 || idx < 0 {
				t.Fatalf("ParseEventID(%q) = %d, %d", eventID, rev, idx)
			}
			if r2, i2, err := ParseEventID(EventID(rev, idx)); err != nil || r2 != rev || i2 != idx {
				t.Fatalf("event id %d-%d does not round-trip", rev, idx)
			}
		} else if !errors.Is(err, ErrInvalid) {
			t.Fatalf("ParseEventID(%q): unclassed error %v", eventID, err)
		}
		if m, err := ParseVersionQuery(query); err == nil {
			m.Match(e.Version)
		} else if !errors.Is(err, ErrInvalid) {
			t.Fatalf("ParseVersionQuery(%q): unclassed error %v", query, err)
		}
		var d TTL
		if err := d.UnmarshalJSON([]byte(body)); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("TTL.UnmarshalJSON(%q): unclassed error %v", body, err)
		}
	})
}
