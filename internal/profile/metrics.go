package profile

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics count profile loads and publishes. A nil *Metrics counts nothing.
type Metrics struct {
	loads     *prometheus.CounterVec
	publishes *prometheus.CounterVec
}

// Results of Metrics.Load.
const (
	LoadFound   = "found"   // a usable profile
	LoadNone    = "none"    // no profile yet
	LoadIgnored = "ignored" // one that does not open or is stale
	LoadError   = "error"   // the store failed
)

// NewMetrics registers the profile metrics on reg (nil: unregistered). When
// another Metrics registered them on reg already, it shares its counters.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_profile_loads_total",
			Help: "Learned startup profiles looked up at image open, by result (found, none, ignored, error).",
		}, []string{"result"}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lode_profile_publishes_total",
			Help: "Start read sets published as learned startup profiles, by result (ok, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		m.loads = register(reg, m.loads)
		m.publishes = register(reg, m.publishes)
	}
	return m
}

func register(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return old
			}
		}
	}
	return c
}

// Load counts one lookup with result (LoadFound, ...).
func (m *Metrics) Load(result string) {
	if m != nil {
		m.loads.WithLabelValues(result).Inc()
	}
}

// Publish counts one publish.
func (m *Metrics) Publish(err error) {
	if m == nil {
		return
	}
	r := "ok"
	if err != nil {
		r = "error"
	}
	m.publishes.WithLabelValues(r).Inc()
}
