package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/metrics"
)

// Metrics are the agent's Prometheus metrics, labelled by tier ("mem" for
// the memory cache, then each Tier's Name). One Metrics may be shared by
// several Agents. A nil *Metrics records nothing.
type Metrics struct {
	requests     *prometheus.CounterVec   // tier, result=hit|miss|error
	tierBytes    *prometheus.CounterVec   // tier
	fetchSeconds *prometheus.HistogramVec // tier
	verifyFails  *prometheus.CounterVec   // tier
	fillErrors   *prometheus.CounterVec   // tier
	fillSkipped  prometheus.Counter
	readBytes    prometheus.Counter
	holeReads    prometheus.Counter
	readErrors   prometheus.Counter
	readAhead    prometheus.Counter
	memBytes     prometheus.Gauge
	degraded     *prometheus.CounterVec // reason (degraded.go)
	fillBytes    prometheus.Counter     // background fill (fill.go)
	panics       prometheus.Counter     // recovered panics in the read path (recover.go)

	startsInFlight prometheus.Gauge   // Admission
	startsRejected prometheus.Counter // Admission: ErrTooManyStarts
}

// NewMetrics creates the agent metrics and registers them with reg (if reg
// is not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_agent_tier_requests_total",
			Help: "Chunk requests to each tier, by result (hit, miss, error).",
		}, []string{"tier", "result"}),
		tierBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_agent_tier_bytes_total",
			Help: "Bytes served by each tier (ciphertext for fetch tiers, plaintext for mem).",
		}, []string{"tier"}),
		fetchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lode_agent_tier_fetch_seconds",
			Help:    "Latency of one chunk request to each tier, whatever its result.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"tier"}),
		verifyFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_agent_verify_failures_total",
			Help: "Chunks from a tier that failed verification (name or GCM tag).",
		}, []string{"tier"}),
		fillErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_agent_fill_errors_total",
			Help: "Failed write-backs of verified ciphertext into a faster tier.",
		}, []string{"tier"}),
		fillSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_fill_skipped_total",
			Help: "Write-backs skipped because every fill slot was busy.",
		}),
		readBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_read_bytes_total",
			Help: "Bytes returned to readers of images.",
		}),
		holeReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_hole_reads_total",
			Help: "Chunk reads served as zeros from a hole, without a fetch.",
		}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_read_errors_total",
			Help: "Chunk reads that failed (the reader got EIO).",
		}),
		readAhead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_readahead_fetches_total",
			Help: "Chunk fetches started by read-ahead.",
		}),
		memBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lode_agent_mem_cache_bytes",
			Help: "Plaintext bytes held by the memory cache.",
		}),
		degraded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_agent_image_degraded_total",
			Help: "Chunk fetches where lazy loading degraded, by reason (origin_fallback, verify_failure, fleet_unreachable).",
		}, []string{"reason"}),
		fillBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_background_fill_bytes_total",
			Help: "Plaintext bytes of chunks fetched by the background fill.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_read_panics_total",
			Help: "Panics recovered in the read path; each failed one read with EIO (a bug: see the log for its stack).",
		}),
		startsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lode_agent_starts_in_flight",
			Help: "Image starts holding an admission slot.",
		}),
		startsRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_agent_starts_rejected_total",
			Help: "Image starts refused with \"too many starts in flight\" after waiting for a slot.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.tierBytes, m.fetchSeconds, m.verifyFails, m.fillErrors,
			m.fillSkipped, m.readBytes, m.holeReads, m.readErrors, m.readAhead, m.memBytes,
			m.startsInFlight, m.startsRejected, m.degraded, m.fillBytes, m.panics)
	}
	return m
}

// tierMetrics are one tier's children, resolved once so the read path does
// no label lookups. Every field is nil-safe through the methods below.
type tierMetrics struct {
	hit, miss, err prometheus.Counter
	bytes          prometheus.Counter
	seconds        prometheus.Observer
	verify         prometheus.Counter
	fillErr        prometheus.Counter
}

func (m *Metrics) forTier(name string) tierMetrics {
	if m == nil {
		return tierMetrics{}
	}
	return tierMetrics{
		hit:     m.requests.WithLabelValues(name, "hit"),
		miss:    m.requests.WithLabelValues(name, "miss"),
		err:     m.requests.WithLabelValues(name, "error"),
		bytes:   m.tierBytes.WithLabelValues(name),
		seconds: m.fetchSeconds.WithLabelValues(name),
		verify:  m.verifyFails.WithLabelValues(name),
		fillErr: m.fillErrors.WithLabelValues(name),
	}
}

func inc(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}

func add(c prometheus.Counter, v int) {
	if c != nil {
		c.Add(float64(v))
	}
}

func observe(o prometheus.Observer, seconds float64) {
	if o != nil {
		o.Observe(seconds)
	}
}

// agentMetrics are the non-tier metrics, nil when Metrics is nil.
type agentMetrics struct {
	fillSkipped, readBytes, holeReads, readErrors, readAhead prometheus.Counter
	memBytes                                                 prometheus.Gauge
	fillBytes                                                prometheus.Counter
	panics                                                   prometheus.Counter
}

func (m *Metrics) agent() agentMetrics {
	if m == nil {
		return agentMetrics{}
	}
	return agentMetrics{m.fillSkipped, m.readBytes, m.holeReads, m.readErrors, m.readAhead, m.memBytes, m.fillBytes, m.panics}
}
