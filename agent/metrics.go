package agent

import (
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/visorhq/visor/supervisor"
)

// metrics are the agent's Prometheus metrics, on a registry of its own
// (no global state), served at /metrics.
type metrics struct {
	reg             *prometheus.Registry
	claimsWon       prometheus.Counter
	claimsLost      prometheus.Counter
	claimConflicts  prometheus.Counter
	claimBatches    prometheus.Counter
	leaseLost       prometheus.Counter
	connected       prometheus.Gauge
	leader          prometheus.Gauge
	ticketToRunning prometheus.Histogram
	// badRecords logs and counts the registry records the agent skipped.
	badRecords *badRecords
}

// instanceLister lists the supervised instances, and reads one with its
// usage (*supervisor.Supervisor).
type instanceLister interface {
	List() []supervisor.Status
	Status(id string) (supervisor.Status, bool)
}

// newMetrics builds the metrics; instances are read at scrape time.
func newMetrics(log hclog.Logger, instances instanceLister) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		claimsWon: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "visor_agent_claims_won_total", Help: "Tickets this agent claimed.",
		}),
		claimsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "visor_agent_claims_lost_total", Help: "Claims lost to another host (ticket already claimed or changed).",
		}),
		claimConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "visor_agent_claim_conflicts_total",
			Help: "Claims lost in a failed transaction (counted in claims_lost too); the rest were abandoned before trying, on seeing another host's claim.",
		}),
		claimBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "visor_agent_claim_transactions_total",
			Help: "Claim round trips: each claims up to 16 tickets that were waiting together.",
		}),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "visor_agent_lease_lost_total", Help: "Registry sessions lost (lease expired or etcd unreachable).",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "visor_agent_lease_up", Help: "1 while the agent holds a live registry lease.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "visor_agent_reconciler_leader", Help: "1 while this agent is the elected reconciler.",
		}),
		ticketToRunning: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "visor_agent_ticket_to_running_seconds",
			Help:    "Time from a start ticket's creation to its instance running.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		badRecords: newBadRecords(log),
	}
	m.reg.MustRegister(m.claimsWon, m.claimsLost, m.claimConflicts, m.claimBatches, m.leaseLost, m.connected, m.leader, m.ticketToRunning,
		&instanceCollector{instances: instances}, &usageCollector{instances: instances}, m.badRecords,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) setConnected(up bool) {
	if up {
		m.connected.Set(1)
	} else {
		m.connected.Set(0)
	}
}

// instanceCollector reports instances by state and restarts by reason from
// the supervisor at scrape time, so nothing is kept twice.
type instanceCollector struct{ instances instanceLister }

var (
	instancesDesc = prometheus.NewDesc("visor_agent_instances", "Instances supervised here, by state.", []string{"state"}, nil)
	restartsDesc  = prometheus.NewDesc("visor_agent_instance_restarts_total", "Restarts of instances supervised here, by reason.", []string{"reason"}, nil)
)

func (c *instanceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instancesDesc
	ch <- restartsDesc
}

func (c *instanceCollector) Collect(ch chan<- prometheus.Metric) {
	byState := map[supervisor.State]int{
		supervisor.StateStarting: 0, supervisor.StateRunning: 0, supervisor.StateBackoff: 0,
		supervisor.StateStopping: 0, supervisor.StateExited: 0, supervisor.StateFailed: 0,
	}
	restarts := map[string]int{}
	for _, st := range c.instances.List() {
		byState[st.State]++
		for r, n := range st.Restarts {
			restarts[r] += n
		}
	}
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), string(s))
	}
	for r, n := range restarts {
		ch <- prometheus.MustNewConstMetric(restartsDesc, prometheus.CounterValue, float64(n), r)
	}
}
