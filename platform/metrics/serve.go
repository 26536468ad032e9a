package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthCheckTimeout bounds one /healthz answer.
const healthCheckTimeout = 2 * time.Second

// OpsHandler serves GET /metrics from reg and GET /healthz from healthz;
// every other path is 404.
func OpsHandler(reg *prometheus.Registry, healthz http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", Handler(reg))
	mux.Handle("GET /healthz", healthz)
	return mux
}

// GRPCHealthz answers 200 "ok" while the gRPC health server hs reports the
// whole server SERVING, and 503 with the status otherwise (for instance
// NOT_SERVING once a graceful stop has begun).
func GRPCHealthz(hs healthpb.HealthServer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), healthCheckTimeout)
		defer cancel()
		resp, err := hs.Check(ctx, &healthpb.HealthCheckRequest{})
		st := resp.GetStatus()
		if err == nil && st == healthpb.HealthCheckResponse_SERVING {
			writeText(w, http.StatusOK, "ok")
			return
		}
		msg := st.String()
		if err != nil {
			msg = err.Error()
		}
		writeText(w, http.StatusServiceUnavailable, "not serving: "+msg)
	})
}

func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}

// Server is an HTTP server for /metrics and /healthz, beside a gRPC
// service.
type Server struct {
	srv  *http.Server
	addr string
	errc chan error
	log  *slog.Logger
}

// Start serves h on lis (closed by Shutdown) in the background.
func Start(lis net.Listener, h http.Handler, log *slog.Logger) *Server {
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second, // answers are small
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		addr: lis.Addr().String(),
		errc: make(chan error, 1),
		log:  log,
	}
	go func() { s.errc <- s.srv.Serve(lis) }()
	log.Info("metrics listening", "addr", s.addr)
	return s
}

// Shutdown stops the server, waiting at most grace for requests running.
func (s *Server) Shutdown(grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	if err := <-s.errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics serve %s: %w", s.addr, err)
	}
	return nil
}
