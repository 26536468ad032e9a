package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Cache counts what the cache serves: narinfo lookups that found a path
// (hits) or not (misses), and NAR downloads. Its methods do nothing on a
// nil *Cache, so code can take one optionally.
type Cache struct {
	narinfo      *prometheus.CounterVec
	narDownloads prometheus.Counter
	narBytes     prometheus.Counter
}

// NewCache registers the cache counters with reg.
func NewCache(reg prometheus.Registerer) *Cache {
	c := &Cache{
		narinfo: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "narinfo_requests_total",
			Help: `narinfo lookups, by result: "hit" (the path is cached) or "miss".`,
		}, []string{"result"}),
		narDownloads: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "nar_downloads_total",
			Help: "NAR downloads started.",
		}),
		narBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "nar_bytes_served_total",
			Help: "NAR file bytes served.",
		}),
	}
	// Both results exist from the start, so that rates work at once.
	c.narinfo.WithLabelValues("hit")
	c.narinfo.WithLabelValues("miss")
	reg.MustRegister(c.narinfo, c.narDownloads, c.narBytes)
	return c
}

// NarinfoHit counts a narinfo lookup that found its path.
func (c *Cache) NarinfoHit() {
	if c != nil {
		c.narinfo.WithLabelValues("hit").Inc()
	}
}

// NarinfoMiss counts a narinfo lookup that found nothing.
func (c *Cache) NarinfoMiss() {
	if c != nil {
		c.narinfo.WithLabelValues("miss").Inc()
	}
}

// NarDownload counts a NAR download starting.
func (c *Cache) NarDownload() {
	if c != nil {
		c.narDownloads.Inc()
	}
}

// NarBytesServed counts n bytes of NAR files sent.
func (c *Cache) NarBytesServed(n int) {
	if c != nil && n > 0 {
		c.narBytes.Add(float64(n))
	}
}

// CatalogStats is the size of the catalogue at one moment.
type CatalogStats struct {
	PushedPaths      uint64
	LocalPaths       uint64
	PinnedPaths      uint64
	QuarantinedPaths uint64
	// NarBytes is the sum of the NarSize of every path.
	NarBytes uint64
	// StoredBytes is the bytes of NAR files on disk.
	StoredBytes uint64
}

// RegisterCatalog registers gauges of the catalogue's size with reg; stats
// is called at each scrape (every 15 s or so: make it cheap, e.g. counters
// kept up to date, not a scan). When it fails, the scrape reports the error
// for these gauges and still serves every other metric.
func RegisterCatalog(reg prometheus.Registerer, stats func() (CatalogStats, error)) error {
	return reg.Register(&catalogCollector{stats: stats})
}

var (
	catalogPaths = prometheus.NewDesc(namespace+"_catalog_paths",
		`Catalogued store paths, by source: "pushed" (nix copy --to) or "local" (the host's store).`, []string{"source"}, nil)
	catalogPinned = prometheus.NewDesc(namespace+"_catalog_pinned_paths",
		"Pins (paths or closures kept from garbage collection).", nil, nil)
	catalogQuarantined = prometheus.NewDesc(namespace+"_catalog_quarantined_paths",
		"Paths that failed verification and are not served.", nil, nil)
	catalogNarBytes = prometheus.NewDesc(namespace+"_catalog_nar_bytes",
		"Sum of the NAR sizes of the catalogued paths.", nil, nil)
	catalogStoredBytes = prometheus.NewDesc(namespace+"_catalog_stored_bytes",
		"Bytes of NAR files on disk.", nil, nil)
)

type catalogCollector struct {
	stats func() (CatalogStats, error)
}

func (c *catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{catalogPaths, catalogPinned, catalogQuarantined, catalogNarBytes, catalogStoredBytes} {
		ch <- d
	}
}

func (c *catalogCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(catalogPaths, err)
		return
	}
	gauge := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	gauge(catalogPaths, s.PushedPaths, "pushed")
	gauge(catalogPaths, s.LocalPaths, "local")
	gauge(catalogPinned, s.PinnedPaths)
	gauge(catalogQuarantined, s.QuarantinedPaths)
	gauge(catalogNarBytes, s.NarBytes)
	gauge(catalogStoredBytes, s.StoredBytes)
}

// Signer counts what the signer does. Its methods do nothing on a nil
// *Signer.
type Signer struct {
	signatures *prometheus.CounterVec
}

// NewSigner registers the signer's counters with reg; keys, called at
// each scrape, returns how many keys are active and retired.
func NewSigner(reg prometheus.Registerer, keys func() (active, retired int)) *Signer {
	s := &Signer{
		signatures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "signer", Name: "signatures_total",
			Help: "Signatures made, by key name.",
		}, []string{"key"}),
	}
	reg.MustRegister(s.signatures)
	if keys != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: namespace, Subsystem: "signer", Name: "active_keys",
				Help: "Keys the signer signs with.",
			}, func() float64 { a, _ := keys(); return float64(a) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: namespace, Subsystem: "signer", Name: "retired_keys",
				Help: "Retired keys the signer still lists.",
			}, func() float64 { _, r := keys(); return float64(r) }),
		)
	}
	return s
}

// Signed counts n signatures made with the key named key.
func (s *Signer) Signed(key string, n int) {
	if s != nil && n > 0 {
		s.signatures.WithLabelValues(key).Add(float64(n))
	}
}
