package agent

import (
	"reflect"
	"testing"
	"time"
)

// TestConfigDefaults: a zero Config gets exactly DefaultConfig's value in
// every field DefaultConfig sets, and a field given keeps its value.
func TestConfigDefaults(t *testing.T) {
	d := DefaultConfig()
	got := Config{HostID: "h1", DataDir: "/d", RunDir: "/r"}.withDefaults()
	dv, gv := reflect.ValueOf(d), reflect.ValueOf(got)
	set := 0
	for i := range dv.NumField() {
		f := dv.Type().Field(i)
		if dv.Field(i).IsZero() {
			continue
		}
		set++
		if !reflect.DeepEqual(gv.Field(i).Interface(), dv.Field(i).Interface()) {
			t.Errorf("%s: withDefaults gave %v, DefaultConfig says %v", f.Name, gv.Field(i).Interface(), dv.Field(i).Interface())
		}
	}
	if set < 25 {
		t.Errorf("DefaultConfig sets %d fields, want every defaulted one (at least 25)", set)
	}
	if got.Addr != "h1" {
		t.Errorf("Addr defaulted to %q, want the host id", got.Addr)
	}

	given := Config{TTL: 3 * time.Second, StartRate: 5, PortMin: 1000, PortMax: 1100, StatusInterval: time.Minute,
		ArtifactMaxEntries: 7, Cgroups: "none", DisableHTTP: true}.withDefaults()
	if given.TTL != 3*time.Second || given.StartRate != 5 || given.PortMin != 1000 || given.PortMax != 1100 ||
		given.StatusInterval != time.Minute || given.ArtifactMaxEntries != 7 || given.Cgroups != "none" || given.HTTPAddr != "" {
		t.Errorf("given values were not kept: %+v", given)
	}
	// A status interval below the default is raised to it.
	if c := (Config{StatusInterval: time.Second}).withDefaults(); c.StatusInterval != d.StatusInterval {
		t.Errorf("StatusInterval 1s became %s, want %s", c.StatusInterval, d.StatusInterval)
	}
	// Each call returns its own slices.
	d.SocketGroupScopes[0] = ScopeOperator
	if DefaultConfig().SocketGroupScopes[0] != ScopeRead {
		t.Error("DefaultConfig shares its SocketGroupScopes slice between calls")
	}
}
