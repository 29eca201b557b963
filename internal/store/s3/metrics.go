package s3

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/metrics"
)

// Metrics counts and times store operations and the HTTP requests behind
// them (which include retries). A nil *Metrics records nothing.
type Metrics struct {
	ops      *prometheus.CounterVec   // op, result
	latency  *prometheus.HistogramVec // op
	requests *prometheus.CounterVec   // method, code
}

// NewMetrics creates the collectors and registers them on reg (nil: not
// registered, still counted).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_store_s3_operations_total",
			Help: "Store operations on S3 by operation and result (ok, not_found, exists, error).",
		}, []string{"op", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lode_store_s3_operation_seconds",
			Help:    "Latency of store operations on S3, retries included.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"op"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_store_s3_http_requests_total",
			Help: "HTTP requests sent to the S3 endpoint (every attempt) by method and status code, or \"error\" when none came back.",
		}, []string{"method", "code"}),
	}
	if reg != nil {
		reg.MustRegister(m.ops, m.latency, m.requests)
	}
	return m
}

// observe records one operation that started at start.
func (m *Metrics) observe(op string, start time.Time, result string) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(op, result).Inc()
	m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// transport counts every HTTP attempt.
type transport struct {
	next http.RoundTripper
	m    *Metrics
}

func (t transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	t.m.requests.WithLabelValues(req.Method, code).Inc()
	return resp, err
}
