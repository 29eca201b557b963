package gc

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/store"
)

// Metrics exports what passes did. A nil *Metrics records nothing.
type Metrics struct {
	roots         *prometheus.GaugeVec // state
	alarms        prometheus.Gauge
	liveImages    prometheus.Gauge
	deletedImages prometheus.Gauge
	passes        *prometheus.CounterVec // result
	objectsCopied prometheus.Counter
	bytesCopied   prometheus.Counter
	objectsFreed  prometheus.Counter
	bytesFreed    prometheus.Counter
	passSeconds   prometheus.Gauge
}

// NewMetrics creates the collectors and registers them on reg (nil: not
// registered, still counted).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		roots: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lode_gc_roots",
			Help: "Roots by state after the last pass (active, retired, expired, deleting).",
		}, []string{"state"}),
		alarms: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lode_gc_root_alarms",
			Help: "Roots with an alarm marker (their deletion is blocked) after the last pass.",
		}),
		liveImages: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lode_gc_live_images",
			Help: "Live images after the last pass.",
		}),
		deletedImages: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lode_gc_deleted_images",
			Help: "Pointers of deleted images not yet removed after the last pass.",
		}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_gc_passes_total",
			Help: "GC passes by result (ok, error, dry_run).",
		}, []string{"result"}),
		objectsCopied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_gc_copied_objects_total",
			Help: "Chunks and manifests copied forward into the active root.",
		}),
		bytesCopied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_gc_copied_bytes_total",
			Help: "Bytes copied forward into the active root.",
		}),
		objectsFreed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_gc_freed_objects_total",
			Help: "Objects deleted with their roots.",
		}),
		bytesFreed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lode_gc_freed_bytes_total",
			Help: "Bytes deleted with their roots.",
		}),
		passSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lode_gc_last_pass_seconds",
			Help: "Duration of the last pass.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.roots, m.alarms, m.liveImages, m.deletedImages, m.passes,
			m.objectsCopied, m.bytesCopied, m.objectsFreed, m.bytesFreed, m.passSeconds)
	}
	return m
}

func (m *Metrics) observe(r *Report, err error) {
	if m == nil {
		return
	}
	switch {
	case r.DryRun:
		m.passes.WithLabelValues("dry_run").Inc()
		return // a dry run changed nothing: leave the gauges and totals alone
	case err != nil:
		m.passes.WithLabelValues("error").Inc()
	default:
		m.passes.WithLabelValues("ok").Inc()
	}
	m.objectsCopied.Add(float64(r.ObjectsCopied))
	m.bytesCopied.Add(float64(r.BytesCopied))
	m.objectsFreed.Add(float64(r.ObjectsFreed))
	m.bytesFreed.Add(float64(r.BytesFreed))
	m.passSeconds.Set(r.Duration.Seconds())
	if len(r.Roots) == 0 && err != nil {
		return // the pass failed before it could see the roots
	}
	counts := map[store.RootState]int{store.RootActive: 0, store.RootRetired: 0, store.RootExpired: 0, store.RootDeleting: 0}
	alarms := 0
	for _, rr := range r.Roots {
		counts[rr.State]++
		if rr.Alarm {
			alarms++
		}
	}
	for s, n := range counts {
		m.roots.WithLabelValues(string(s)).Set(float64(n))
	}
	m.alarms.Set(float64(alarms))
	m.liveImages.Set(float64(r.LiveImages))
	m.deletedImages.Set(float64(r.DeletedImages))
}
