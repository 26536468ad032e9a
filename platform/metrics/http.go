package metrics

import (
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// statusClientClosed is nginx's "client closed request": the code of a
// request whose client went away before an answer was written.
const statusClientClosed = 499

// HTTPOptions configure NewHTTP.
type HTTPOptions struct {
	// Route returns the route class of a request, the "route" label: a
	// small fixed set of values (Nix's routes would be one series per store
	// path). Nil labels every request "other".
	Route func(*http.Request) string
	// OnResponse, when set, is called after each request with its route
	// class and status code, for domain metrics derived from them (e.g.
	// narinfo hits and misses).
	OnResponse func(r *http.Request, route string, code int)
}

// HTTP measures HTTP requests by route class, method and status: how many,
// how long they took, how many are running, and the body bytes served and
// received (counted as they flow, so a long NAR transfer shows in rates
// while it runs).
type HTTP struct {
	opts     HTTPOptions
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
	sent     *prometheus.CounterVec
	received *prometheus.CounterVec
}

// NewHTTP registers the HTTP metrics with reg.
func NewHTTP(reg prometheus.Registerer, opts HTTPOptions) *HTTP {
	m := &HTTP{
		opts: opts,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests answered, by route class, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time from a request's headers to the end of its answer, by route class and method.",
			Buckets: latencyBuckets,
		}, []string{"route", "method"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "http", Name: "in_flight_requests",
			Help: "HTTP requests being answered now, by route class.",
		}, []string{"route"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "http", Name: "response_bytes_total",
			Help: "Response body bytes written, by route class.",
		}, []string{"route"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "http", Name: "request_bytes_total",
			Help: "Request body bytes read, by route class.",
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration, m.inFlight, m.sent, m.received)
	return m
}

// Middleware measures every request next answers.
func (m *HTTP) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		route := "other"
		if m.opts.Route != nil {
			route = m.opts.Route(r)
		}
		method := methodLabel(r.Method)
		inFlight := m.inFlight.WithLabelValues(route)
		inFlight.Inc()
		defer inFlight.Dec()

		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countingBody{ReadCloser: r.Body, n: m.received.WithLabelValues(route)}
		}
		cw := &countingWriter{ResponseWriter: w, n: m.sent.WithLabelValues(route)}
		next.ServeHTTP(cw, r)

		code := cw.code
		if code == 0 {
			code = http.StatusOK // what net/http sends for a handler that wrote nothing
			if r.Context().Err() != nil {
				code = statusClientClosed
			}
		}
		m.duration.WithLabelValues(route, method).Observe(time.Since(start).Seconds())
		m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
		if m.opts.OnResponse != nil {
			m.opts.OnResponse(r, route, code)
		}
	})
}

// methodLabel bounds the method label to the standard methods.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost,
		http.MethodDelete, http.MethodPatch, http.MethodOptions:
		return method
	default:
		return "other"
	}
}

// countingBody counts the request body bytes the handler reads.
type countingBody struct {
	io.ReadCloser
	n prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.n.Add(float64(n))
	}
	return n, err
}

// countingWriter remembers the status and counts the body bytes written.
type countingWriter struct {
	http.ResponseWriter
	code int
	n    prometheus.Counter
}

func (w *countingWriter) WriteHeader(code int) {
	// 1xx answers are not the final status.
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	if n > 0 {
		w.n.Add(float64(n))
	}
	return n, err
}

// WriteString passes s on without copying it into a []byte.
func (w *countingWriter) WriteString(s string) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := io.WriteString(w.ResponseWriter, s)
	if n > 0 {
		w.n.Add(float64(n))
	}
	return n, err
}

// ReadFrom passes src on to the ResponseWriter below, so that a file
// reaches net/http's connection whole and goes out with sendfile.
func (w *countingWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := io.Copy(w.ResponseWriter, src)
	if n > 0 {
		w.n.Add(float64(n))
	}
	return n, err
}

// Flush passes a flush on (a streamed JSON answer flushes each message).
func (w *countingWriter) Flush() {
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
