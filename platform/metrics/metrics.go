// Package metrics is how every nixcache service is watched: Prometheus
// metrics (github.com/prometheus/client_golang) for its gRPC server and
// clients, the gateway's HTTP traffic and the cache's own counters, served
// at /metrics, and a /healthz endpoint.
//
// Each service builds one Registry, hands it to what it measures, and
// serves it with Handler (the gateway on its HTTP port) or Start (the
// index and the signer, on -metrics-listen, with OpsHandler). Metric names:
//
//	grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}  calls finished
//	grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}         call latency
//	grpc_server_in_flight{grpc_type,grpc_service,grpc_method}                calls running
//	grpc_client_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}  calls to upstreams
//	grpc_client_handling_seconds{grpc_type,grpc_service,grpc_method}         their latency
//	nixcache_http_requests_total{route,method,code}                          HTTP requests
//	nixcache_http_request_duration_seconds{route,method}                     their latency
//	nixcache_http_in_flight_requests{route}                                  HTTP requests running
//	nixcache_http_response_bytes_total{route}                                body bytes served
//	nixcache_http_request_bytes_total{route}                                 body bytes received
//	nixcache_narinfo_requests_total{result="hit"|"miss"}                     narinfo lookups
//	nixcache_nar_downloads_total, nixcache_nar_bytes_served_total            NARs served
//	nixcache_catalog_*                                                       catalogue size
//	nixcache_signer_signatures_total{key}                                    signatures made
//
// plus the Go runtime's go_* and the process's process_* metrics.
package metrics

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// namespace prefixes nixcache's own metrics.
const namespace = "nixcache"

// latencyBuckets are the latency histogram buckets, in seconds: from a
// catalogue lookup (a millisecond) to a large NAR transfer (minutes).
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// NewRegistry returns a registry holding the Go runtime and process
// collectors. Each service makes one; nothing is registered globally, so
// tests can run several services in one process.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves reg in the Prometheus text (or OpenMetrics) format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:          reg, // counts its own scrape errors
		EnableOpenMetrics: true,
		// A failing collector (say, the catalogue's) must not hide the rest.
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// splitMethod splits a full gRPC method name "/pkg.Service/Method".
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndex(full, "/"); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}
