package agent

import (
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
)

// Reasons lazy loading did not happen as designed or degraded for an image
// (issue #9). Each is counted per image (Image.Degraded, Stats.Degraded) and
// in lode_agent_image_degraded_total{reason}, and logged once per image.
const (
	// DegradedOriginFallback: a chunk came from the origin although a fleet
	// tier is configured (the fleet missed or failed).
	DegradedOriginFallback = "origin_fallback"
	// DegradedVerifyFailure: a tier served bytes that failed verification.
	DegradedVerifyFailure = "verify_failure"
	// DegradedFleetUnreachable: the fleet tier returned an error other than
	// a miss, or a miss because nodes did not answer (down, timing out,
	// refusing connections) or none are known.
	DegradedFleetUnreachable = "fleet_unreachable"
)

// DegradedReasons lists every reason, in a stable order.
var DegradedReasons = []string{DegradedOriginFallback, DegradedVerifyFailure, DegradedFleetUnreachable}

// degradedState counts degraded events per image name and reason.
type degradedState struct {
	mu     sync.Mutex
	counts map[string]map[string]int64 // image → reason → events
}

// degrade records one event of reason for image: the counter, the metric,
// and a warning the first time the image meets this reason (with every
// reason's count so far, and the cause).
func (a *Agent) degrade(image, reason string, cause error) {
	d := &a.deg
	d.mu.Lock()
	if d.counts == nil {
		d.counts = make(map[string]map[string]int64)
	}
	m := d.counts[image]
	if m == nil {
		m = make(map[string]int64)
		d.counts[image] = m
	}
	m[reason]++
	first := m[reason] == 1
	var attrs []any
	if first {
		attrs = []any{slog.String("image", image), slog.String("reason", reason)}
		for _, r := range DegradedReasons {
			attrs = append(attrs, slog.Int64(r, m[r]))
		}
		if cause != nil {
			// errors.Join puts each tier's cause on its own line; keep the
			// log record on one.
			attrs = append(attrs, slog.String("err", strings.ReplaceAll(cause.Error(), "\n", "; ")))
		}
	}
	d.mu.Unlock()
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.degraded.WithLabelValues(reason).Inc()
	}
	if first {
		a.log.Warn("lazy loading degraded", attrs...)
	}
}

// degradedCounts returns a copy of image's counts, nil if none.
func (a *Agent) degradedCounts(image string) map[string]int64 {
	a.deg.mu.Lock()
	defer a.deg.mu.Unlock()
	m := a.deg.counts[image]
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

// hasFleet reports whether one of the agent's tiers is the cache fleet.
func (a *Agent) hasFleet() bool {
	for _, ts := range a.tiers {
		if ts.fleet {
			return true
		}
	}
	return false
}

// Degraded returns, per reason (DegradedOriginFallback, ...), how many
// chunk fetches for this image degraded that way; nil when none did. Counts
// are kept per image name on the agent, so images opened under the same
// name share them.
func (im *Image) Degraded() map[string]int64 { return im.a.degradedCounts(im.name) }

// fleetMissUnreachable reports whether a fleet miss (an error wrapping
// store.ErrNotFound) came from nodes that did not answer rather than from
// nodes that answered without the chunk: the fleet client reports both as
// misses so that the agent falls through to the origin.
func fleetMissUnreachable(err error) bool {
	// The fleet client's errors say so themselves (cachefleet.ErrNoNodes,
	// *cachefleet.MissError); the method keeps agent from importing it.
	var u interface{ Unreachable() bool }
	return errors.As(err, &u) && u.Unreachable()
}
