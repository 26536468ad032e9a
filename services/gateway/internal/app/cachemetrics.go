package app

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nixcache/nixcache/services/gateway/internal/httpapi"
)

var (
	narinfoCacheHits = prometheus.NewDesc("nixcache_narinfo_cache_hits_total",
		"narinfo lookups answered from the gateway's cache (a narinfo or a 404).", nil, nil)
	narinfoCacheMisses = prometheus.NewDesc("nixcache_narinfo_cache_misses_total",
		"narinfo lookups the cache could not answer (asked of the index).", nil, nil)
	narinfoCacheEvictions = prometheus.NewDesc("nixcache_narinfo_cache_evictions_total",
		`narinfo cache entries dropped, by reason: "size", "expired", "invalidated" (the index reported the path changed, or it was pushed here), "dropped" (all, when the index watch got in sync or was lost).`,
		[]string{"reason"}, nil)
	narinfoCacheEntries = prometheus.NewDesc("nixcache_narinfo_cache_entries",
		"Answers in the narinfo cache.", nil, nil)
	narinfoCacheBytes = prometheus.NewDesc("nixcache_narinfo_cache_bytes",
		"Memory the narinfo cache accounts for (its bound is -narinfo-cache-size).", nil, nil)
	indexWatchUp = prometheus.NewDesc("nixcache_index_watch_up",
		"1 while the gateway's watch of the index's changes is in sync (narinfos cached up to -narinfo-cache-max-age), else 0.", nil, nil)
	indexWatchSyncs = prometheus.NewDesc("nixcache_index_watch_syncs_total",
		"Times the index watch got in sync: the first subscription and every resubscription.", nil, nil)
	indexWatchEvents = prometheus.NewDesc("nixcache_index_watch_events_total",
		"Paths the index reported changed (published, removed, re-signed).", nil, nil)
)

// narinfoCacheCollector reads the cache's counters at each scrape.
type narinfoCacheCollector struct {
	stats func() httpapi.NarinfoCacheStats
}

func (c narinfoCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{narinfoCacheHits, narinfoCacheMisses, narinfoCacheEvictions,
		narinfoCacheEntries, narinfoCacheBytes, indexWatchUp, indexWatchSyncs, indexWatchEvents} {
		ch <- d
	}
}

func (c narinfoCacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(narinfoCacheHits, s.Hits)
	counter(narinfoCacheMisses, s.Misses)
	for _, reason := range []string{"size", "expired", "invalidated", "dropped"} {
		counter(narinfoCacheEvictions, s.Evicted[reason], reason)
	}
	gauge(narinfoCacheEntries, float64(s.Entries))
	gauge(narinfoCacheBytes, float64(s.Bytes))
	up := 0.0
	if s.WatchUp {
		up = 1
	}
	gauge(indexWatchUp, up)
	counter(indexWatchSyncs, s.WatchSyncs)
	counter(indexWatchEvents, s.WatchEvents)
}

// registerNarinfoCache registers the narinfo cache's metrics.
func (o *ops) registerNarinfoCache(stats func() httpapi.NarinfoCacheStats) {
	o.reg.MustRegister(narinfoCacheCollector{stats: stats})
}
