package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/visorhq/visor/supervisor"
)

// statusesWithUsage lists the supervisor's instances with what
// Supervisor.Status reads on demand for each live process: CPU, RSS and
// the process's phase ("stopped" after a SIGSTOP). GET /v1/instances and
// /metrics answer with it (issue 17, item 6: CPU and memory appeared only
// in the single-instance call).
func statusesWithUsage(sup instanceLister) []supervisor.Status {
	list := sup.List()
	for i, st := range list {
		if st.PID <= 0 {
			continue
		}
		if full, ok := sup.Status(st.ID); ok {
			list[i] = full
		}
	}
	return list
}

var (
	instanceCPUDesc = prometheus.NewDesc("visor_agent_instance_cpu_percent",
		"CPU use of an instance's main process, percent of one CPU since it started (gopsutil).",
		[]string{"instance", "app", "rev", "proc"}, nil)
	instanceRSSDesc = prometheus.NewDesc("visor_agent_instance_rss_bytes",
		"Resident memory of an instance's main process, in bytes.",
		[]string{"instance", "app", "rev", "proc"}, nil)
)

// usageCollector exports per-instance CPU and memory at scrape time.
type usageCollector struct{ instances instanceLister }

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- instanceCPUDesc
	ch <- instanceRSSDesc
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range statusesWithUsage(c.instances) {
		if st.PID <= 0 {
			continue
		}
		labels := []string{st.ID, st.Meta[metaApp], st.Meta[metaRev], st.Meta[metaProc]}
		ch <- prometheus.MustNewConstMetric(instanceCPUDesc, prometheus.GaugeValue, st.CPUPercent, labels...)
		ch <- prometheus.MustNewConstMetric(instanceRSSDesc, prometheus.GaugeValue, float64(st.RSSBytes), labels...)
	}
}
