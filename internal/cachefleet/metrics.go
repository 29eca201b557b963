package cachefleet

import (
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// ClientMetrics are the fleet client's collectors.
type ClientMetrics struct {
	requests        *prometheus.CounterVec   // node, op, result
	latency         *prometheus.HistogramVec // node, op
	fetches         *prometheus.CounterVec   // result: hit, miss, corrupt, error
	reconstructions prometheus.Counter
	corrupt         prometheus.Counter
	fills           *prometheus.CounterVec // result: ok, error
}

// NewClientMetrics creates the client's collectors and registers them on reg
// (nil: not registered).
func NewClientMetrics(reg prometheus.Registerer) *ClientMetrics {
	m := &ClientMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_fleet_shard_requests_total",
			Help: "Shard requests to fleet nodes by node, op (get, put) and result (get: hit, miss, error, cancelled = answered after Fetch no longer needed it, busy = not sent, the node had too many unanswered; put: ok, error).",
		}, []string{"node", "op", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lode_fleet_shard_request_seconds", Help: "Latency of completed shard requests by node and op.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"node", "op"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_fleet_fetches_total", Help: "Chunk fetches from the fleet by result (hit, miss, corrupt, error).",
		}, []string{"result"}),
		reconstructions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_fleet_reconstructions_total", Help: "Chunk reads that needed parity (a data shard was missing or late).",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_fleet_corrupt_shards_total", Help: "Shards dropped as corrupt (bad header or left out of the verifying set).",
		}),
		fills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_fleet_fills_total", Help: "Chunk write-backs by result (ok, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency, m.fetches, m.reconstructions, m.corrupt, m.fills)
	}
	return m
}
