package app

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nixcache/nixcache/services/index/internal/hostnar"
)

var (
	hostNarBytes = prometheus.NewDesc("nixcache_host_nar_bytes",
		"Bytes of the compressed copies of host paths' NARs on disk (nars/host/).", nil, nil)
	hostNarFiles = prometheus.NewDesc("nixcache_host_nar_files",
		"Compressed copies of host paths' NARs on disk.", nil, nil)
	hostNarBudget = prometheus.NewDesc("nixcache_host_nar_budget_bytes",
		"The byte budget of the compressed copies (-host-nar-max-size).", nil, nil)
	hostNarPending = prometheus.NewDesc("nixcache_host_nar_pending",
		"Host paths queued for a compressed copy, or being copied.", nil, nil)
	hostNarEvents = prometheus.NewDesc("nixcache_host_nar_copies_total",
		`Compressed copies of host paths' NARs, by what became of them: "made", "evicted" (budget), "dropped" (path gone), "skipped", "failed".`, []string{"event"}, nil)
)

// hostNarCollector reads the copies' state at each scrape.
type hostNarCollector struct {
	copies *hostnar.Store
	budget uint64
}

func (c hostNarCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- hostNarBytes
	ch <- hostNarFiles
	ch <- hostNarBudget
	ch <- hostNarPending
	ch <- hostNarEvents
}

func (c hostNarCollector) Collect(ch chan<- prometheus.Metric) {
	u, s := c.copies.Usage(), c.copies.Stats()
	ch <- prometheus.MustNewConstMetric(hostNarBytes, prometheus.GaugeValue, float64(u.Bytes))
	ch <- prometheus.MustNewConstMetric(hostNarFiles, prometheus.GaugeValue, float64(u.Files))
	ch <- prometheus.MustNewConstMetric(hostNarBudget, prometheus.GaugeValue, float64(c.budget))
	ch <- prometheus.MustNewConstMetric(hostNarPending, prometheus.GaugeValue, float64(c.copies.Pending()))
	for event, n := range map[string]uint64{"made": s.Made, "evicted": s.Evicted, "dropped": s.Dropped, "skipped": s.Skipped, "failed": s.Failed} {
		ch <- prometheus.MustNewConstMetric(hostNarEvents, prometheus.CounterValue, float64(n), event)
	}
}
