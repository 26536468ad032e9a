package upstream

import "github.com/prometheus/client_golang/prometheus"

// The results of a lookup, the label of nixcache_upstream_lookups_total.
const (
	resultFetched        = "fetched"         // fetched and published
	resultMiss           = "miss"            // no upstream has it
	resultRefused        = "refused"         // an upstream copy failed a check
	resultUnreachable    = "unreachable"     // an upstream could not be asked, or failed mid-download
	resultFailed         = "failed"          // the index could not store or sign it
	resultNegativeCached = "negative_cached" // answered absent from memory
	resultPending        = "pending"         // still fetching at the caller's deadline
)

// metricSet counts what the puller does. Its methods do nothing on nil.
type metricSet struct {
	lookups  *prometheus.CounterVec
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

// newMetrics registers the upstream metrics with reg; nil registers none.
func newMetrics(reg prometheus.Registerer) *metricSet {
	if reg == nil {
		return nil
	}
	m := &metricSet{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nixcache", Subsystem: "upstream", Name: "lookups_total",
			Help: `Paths looked up upstream on a miss, by result: fetched, miss, refused, unreachable, failed, negative_cached, pending.`,
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nixcache", Subsystem: "upstream", Name: "requests_total",
			Help: `HTTP requests to upstream caches, by upstream, kind (narinfo or nar) and code (the HTTP status, or "error" without an answer).`,
		}, []string{"upstream", "kind", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "nixcache", Subsystem: "upstream", Name: "nar_bytes_total",
			Help: "NAR file bytes downloaded from upstream caches and stored.",
		}, []string{"upstream"}),
	}
	for _, r := range []string{resultFetched, resultMiss, resultRefused, resultUnreachable, resultFailed, resultNegativeCached, resultPending} {
		m.lookups.WithLabelValues(r)
	}
	reg.MustRegister(m.lookups, m.requests, m.bytes)
	return m
}

func (m *metricSet) initUpstream(name string) {
	if m != nil {
		m.bytes.WithLabelValues(name)
	}
}

func (m *metricSet) lookup(result string) {
	if m != nil {
		m.lookups.WithLabelValues(result).Inc()
	}
}

func (m *metricSet) request(upstream, kind, code string) {
	if m != nil {
		m.requests.WithLabelValues(upstream, kind, code).Inc()
	}
}

func (m *metricSet) narBytes(upstream string, n uint64) {
	if m != nil {
		m.bytes.WithLabelValues(upstream).Add(float64(n))
	}
}
