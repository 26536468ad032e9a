package app

import (
	"github.com/prometheus/client_golang/prometheus"

	indexv1 "github.com/nixcache/nixcache/proto/nixcache/index/v1"
	"github.com/nixcache/nixcache/services/index/internal/pathwatch"
)

var (
	watchWatchers = prometheus.NewDesc("nixcache_watch_watchers",
		"WatchPaths streams open (gateways watching the catalogue).", nil, nil)
	watchOverflows = prometheus.NewDesc("nixcache_watch_overflows_total",
		"WatchPaths streams cut off because the watcher fell too far behind.", nil, nil)
	watchEvents = prometheus.NewDesc("nixcache_watch_events_total",
		`Paths whose change the catalogue published to its watchers, by kind: "published", "removed", "changed".`, []string{"kind"}, nil)
	watchTokenEvents = prometheus.NewDesc("nixcache_watch_token_events_total",
		"TOKENS_CHANGED events published to the watchers (a token created or revoked).", nil, nil)
)

// watchCollector reads the hub's counters at each scrape.
type watchCollector struct{ hub *pathwatch.Hub }

func (c watchCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- watchWatchers
	ch <- watchOverflows
	ch <- watchEvents
	ch <- watchTokenEvents
}

func (c watchCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.hub.Stats()
	ch <- prometheus.MustNewConstMetric(watchWatchers, prometheus.GaugeValue, float64(s.Watchers))
	ch <- prometheus.MustNewConstMetric(watchOverflows, prometheus.CounterValue, float64(s.Overflows))
	for kind, name := range map[indexv1.PathEventKind]string{
		indexv1.PathEventKind_PATH_EVENT_KIND_PUBLISHED: "published",
		indexv1.PathEventKind_PATH_EVENT_KIND_REMOVED:   "removed",
		indexv1.PathEventKind_PATH_EVENT_KIND_CHANGED:   "changed",
	} {
		ch <- prometheus.MustNewConstMetric(watchEvents, prometheus.CounterValue, float64(s.Published[kind]), name)
	}
	ch <- prometheus.MustNewConstMetric(watchTokenEvents, prometheus.CounterValue, float64(s.TokenEvents))
}
