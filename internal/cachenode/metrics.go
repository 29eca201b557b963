package cachenode

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
	// rejections counts memory evictions the disk tier did not admit
	// (asked for no more often than the shard they would have evicted).
	rejections prometheus.Counter
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
		rejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_cachenode_disk_rejections_total", Help: "Shards evicted from memory that the disk tier did not admit (TinyLFU: not asked for more often than the shard they would evict).",
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
		reg.MustRegister(m.requests, m.latency, m.hits, m.misses, m.evictions, m.demotions, m.promotions, m.rejections, m.bytes, m.shards, m.leases)
	}
	return m
}
