package cachefleet

import (
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// ServerMetrics are a cache node's collectors.
type ServerMetrics struct {
	requests  *prometheus.CounterVec   // method, code
	latency   *prometheus.HistogramVec // method
	hits      *prometheus.CounterVec   // tier
	misses    prometheus.Counter
	evictions *prometheus.CounterVec // tier
	demotions prometheus.Counter
	// promotions counts disk shards read back into memory (second hit).
	promotions prometheus.Counter
	bytes      *prometheus.GaugeVec   // tier
	shards     *prometheus.GaugeVec   // tier
	leases     *prometheus.CounterVec // result: granted, held
}

// NewServerMetrics creates a node's collectors and registers them on reg
// (nil: not registered, for tests and benchmarks).
func NewServerMetrics(reg prometheus.Registerer) *ServerMetrics {
	m := &ServerMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_cachenode_requests_total", Help: "Shard API requests by method and status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lode_cachenode_request_seconds", Help: "Shard API request latency.", Buckets: metrics.LatencyBuckets,
		}, []string{"method"}),
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_cachenode_hits_total", Help: "Shard reads served, by tier.",
		}, []string{"tier"}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_cachenode_misses_total", Help: "Shard reads not found.",
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_cachenode_evictions_total", Help: "Shards evicted, by tier.",
		}, []string{"tier"}),
		demotions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_cachenode_demotions_total", Help: "Shards moved from memory to disk.",
		}),
		promotions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_cachenode_promotions_total", Help: "Shards read back from disk into memory (a second disk hit soon after the first).",
		}),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lode_cachenode_bytes", Help: "Bytes held (including bookkeeping), by tier.",
		}, []string{"tier"}),
		shards: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lode_cachenode_shards", Help: "Shards held, by tier.",
		}, []string{"tier"}),
		leases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_cachenode_leases_total", Help: "Origin lease requests (POST /v1/leases), by result: granted, or held by another worker.",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency, m.hits, m.misses, m.evictions, m.demotions, m.promotions, m.bytes, m.shards, m.leases)
	}
	return m
}

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
