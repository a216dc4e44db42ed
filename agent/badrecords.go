package agent

import (
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/visorhq/visor/registry"
)

// badRecords reports the registry records the agent skipped because they
// do not decode (registry.BadRecord): each key is logged once at Warn when
// it is first skipped, not on every pass that skips it again, and once at
// Info when no read skips it any more (fixed or deleted); the keys
// currently skipped are counted by kind in visor_registry_bad_records.
//
// Each reader reports under its own source name ("reconciler/instances",
// "launch/<app>", ...) the whole set it skipped on its latest read, so a
// record is current while any source's latest read skipped it.
type badRecords struct {
	log hclog.Logger

	mu       sync.Mutex                               // guards bySource
	bySource map[string]map[string]registry.BadRecord // source -> key -> record
}

func newBadRecords(log hclog.Logger) *badRecords {
	return &badRecords{log: log, bySource: map[string]map[string]registry.BadRecord{}}
}

// observe records bad as everything source skipped on its latest read
// (nil: nothing) and logs the keys that start or stop being skipped.
func (b *badRecords) observe(source string, bad registry.BadRecords) {
	b.mu.Lock()
	defer b.mu.Unlock()
	before := b.current()
	if len(bad) == 0 {
		delete(b.bySource, source)
	} else {
		set := make(map[string]registry.BadRecord, len(bad))
		for _, r := range bad {
			set[r.Key] = r
		}
		b.bySource[source] = set
	}
	b.logChanges(before, b.current())
}

// forget drops every source whose name starts with prefix (a reconciler
// that stopped leading no longer reads what it reported).
func (b *badRecords) forget(prefix string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	before := b.current()
	for s := range b.bySource {
		if strings.HasPrefix(s, prefix) {
			delete(b.bySource, s)
		}
	}
	b.logChanges(before, b.current())
}

// current is the union of all sources' records, by key. Call with mu held.
func (b *badRecords) current() map[string]registry.BadRecord {
	out := map[string]registry.BadRecord{}
	for _, set := range b.bySource {
		maps.Copy(out, set)
	}
	return out
}

func (b *badRecords) logChanges(before, after map[string]registry.BadRecord) {
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if _, seen := before[k]; !seen {
			r := after[k]
			b.log.Warn("skipping a registry record that does not decode; list all with visor doctor",
				"key", r.Key, "kind", r.Kind, "error", r.Err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(before)) {
		if _, still := after[k]; !still {
			b.log.Info("registry record no longer skipped (fixed or deleted)", "key", k)
		}
	}
}

var badRecordsDesc = prometheus.NewDesc("visor_registry_bad_records",
	"Registry records this agent skipped on its latest reads because they do not decode, by kind (the reconciler leader reads hosts, instances, tickets, scales and drains; every agent its own instances and the env it launches with). List them with `visor doctor`.",
	[]string{"kind"}, nil)

// badRecordKinds are reported even at 0, so that alerts see the series.
var badRecordKinds = []string{registry.KindApp, registry.KindEnv, registry.KindRevision, registry.KindProcType,
	registry.KindScale, registry.KindTicket, registry.KindClaim, registry.KindInstance, registry.KindHost,
	registry.KindHostIndex, registry.KindDrain}

// Describe implements prometheus.Collector.
func (b *badRecords) Describe(ch chan<- *prometheus.Desc) { ch <- badRecordsDesc }

// Collect implements prometheus.Collector.
func (b *badRecords) Collect(ch chan<- prometheus.Metric) {
	b.mu.Lock()
	byKind := map[string]int{}
	for _, k := range badRecordKinds {
		byKind[k] = 0
	}
	for _, r := range b.current() {
		byKind[r.Kind]++
	}
	b.mu.Unlock()
	for kind, n := range byKind {
		ch <- prometheus.MustNewConstMetric(badRecordsDesc, prometheus.GaugeValue, float64(n), kind)
	}
}
