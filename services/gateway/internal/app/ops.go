package app

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nixcache/nixcache/platform/metrics"
	"github.com/nixcache/nixcache/services/gateway/internal/httpapi"
)

// readyTimeout bounds each dependency's health check in /readyz.
const readyTimeout = 2 * time.Second

// ops is how the gateway is watched: its metrics, and the /metrics,
// /healthz and /readyz endpoints on its HTTP port.
type ops struct {
	reg    *prometheus.Registry
	client *metrics.GRPCClient
	http   *metrics.HTTP
	cache  *metrics.Cache
}

func newOps() *ops {
	reg := metrics.NewRegistry()
	o := &ops{reg: reg, client: metrics.NewGRPCClient(reg), cache: metrics.NewCache(reg)}
	o.http = metrics.NewHTTP(reg, metrics.HTTPOptions{Route: httpapi.RouteClass, OnResponse: o.countNarinfo})
	return o
}

// dialOptions measure the calls to the index and the signer.
func (o *ops) dialOptions() []grpc.DialOption { return o.client.DialOptions() }

// countNarinfo counts narinfo hits (200) and misses (404).
func (o *ops) countNarinfo(r *http.Request, route string, code int) {
	if route != httpapi.RouteNarinfo || r.Method != http.MethodGet && r.Method != http.MethodHead {
		return
	}
	switch code {
	case http.StatusOK:
		o.cache.NarinfoHit()
	case http.StatusNotFound:
		o.cache.NarinfoMiss()
	}
}

// dependency is an upstream /readyz checks.
type dependency struct {
	name string
	conn grpc.ClientConnInterface
}

// handler serves /metrics, /healthz and /readyz, and every other path with
// next; it measures every request.
func (o *ops) handler(next http.Handler, deps ...dependency) http.Handler {
	metricsHandler := metrics.Handler(o.reg)
	routes := map[string]http.Handler{
		"/metrics": metricsHandler,
		"/healthz": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeOps(w, http.StatusOK, "ok\n") }),
		"/readyz":  http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ready(w, r, deps) }),
	}
	return o.http.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, ok := routes[r.URL.Path]
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeOps(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; allowed: GET, HEAD\n")
			return
		}
		h.ServeHTTP(w, r)
	}))
}

// ready answers 200 when every dependency's grpc.health.v1 reports the
// whole server SERVING, and 503 naming those that do not.
func ready(w http.ResponseWriter, r *http.Request, deps []dependency) {
	problems := make([]string, len(deps))
	var wg sync.WaitGroup
	for i, d := range deps {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			resp, err := healthpb.NewHealthClient(d.conn).Check(ctx, &healthpb.HealthCheckRequest{})
			switch {
			case err != nil:
				problems[i] = err.Error()
			case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
				problems[i] = resp.GetStatus().String()
			}
		})
	}
	wg.Wait()
	var b strings.Builder
	code := http.StatusOK
	for i, d := range deps {
		if problems[i] != "" {
			code = http.StatusServiceUnavailable
			fmt.Fprintf(&b, "%s: down: %s\n", d.name, problems[i])
		} else {
			fmt.Fprintf(&b, "%s: ok\n", d.name)
		}
	}
	if code == http.StatusOK {
		writeOps(w, code, "ready\n"+b.String())
		return
	}
	writeOps(w, code, "not ready\n"+b.String())
}

func writeOps(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprint(w, body)
}
