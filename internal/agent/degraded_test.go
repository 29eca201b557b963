package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// errTier is a tier named name whose every Fetch fails with err.
type errTier struct {
	name string
	err  error
}

func (e errTier) Fetch(context.Context, chunk.Name, []byte) ([]byte, error) { return nil, e.err }
func (e errTier) Fill(context.Context, chunk.Name, []byte) error            { return nil }
func (e errTier) Name() string                                              { return e.name }

// IsFleet: an errTier labelled "fleet" stands for the fleet client.
func (e errTier) IsFleet() bool { return e.name == "fleet" }

// corruptTier serves every chunk of its inner tier with one bit flipped.
type corruptTier struct{ Tier }

func (c corruptTier) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	b, err := c.Tier.Fetch(ctx, n, dst)
	if err == nil {
		b = bytes.Clone(b)
		b[len(b)/2] ^= 1
	}
	return b, err
}
func (c corruptTier) Name() string { return "disk" }

func TestDegradedReasons(t *testing.T) {
	tests := []struct {
		name  string
		tiers func(ti *testImage) []Tier
		want  map[string]int64
	}{
		{"origin only: nothing degraded", func(ti *testImage) []Tier {
			return []Tier{NewOrigin(ti.st, testRoot)}
		}, nil},
		{"fleet misses: origin fallback", func(ti *testImage) []Tier {
			return []Tier{errTier{"fleet", fmt.Errorf("shard: %w", store.ErrNotFound)}, NewOrigin(ti.st, testRoot)}
		}, map[string]int64{DegradedOriginFallback: 3}},
		{"fleet down: unreachable and fallback", func(ti *testImage) []Tier {
			return []Tier{errTier{"fleet", errors.New("dial tcp: connection refused")}, NewOrigin(ti.st, testRoot)}
		}, map[string]int64{DegradedOriginFallback: 3, DegradedFleetUnreachable: 3}},
		{"fleet nodes not answering: unreachable and fallback", func(ti *testImage) []Tier {
			return []Tier{errTier{"fleet", &cachefleet.MissError{Shards: 1, Misses: 1, Failures: 3}}, NewOrigin(ti.st, testRoot)}
		}, map[string]int64{DegradedOriginFallback: 3, DegradedFleetUnreachable: 3}},
		{"fleet nodes answer without the chunk: fallback only", func(ti *testImage) []Tier {
			return []Tier{errTier{"fleet", &cachefleet.MissError{Misses: 5}}, NewOrigin(ti.st, testRoot)}
		}, map[string]int64{DegradedOriginFallback: 3}},
		{"fleet without nodes: unreachable and fallback", func(ti *testImage) []Tier {
			return []Tier{errTier{"fleet", fmt.Errorf("%w (%w)", cachefleet.ErrNoNodes, store.ErrNotFound)}, NewOrigin(ti.st, testRoot)}
		}, map[string]int64{DegradedOriginFallback: 3, DegradedFleetUnreachable: 3}},
		{"corrupt disk: verify failure", func(ti *testImage) []Tier {
			return []Tier{corruptTier{NewOrigin(ti.st, testRoot)}, NewOrigin(ti.st, testRoot)}
		}, map[string]int64{DegradedVerifyFailure: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ti := stdImage(t)
			logs := &syncBuffer{}
			reg := prometheus.NewRegistry()
			m := NewMetrics(reg)
			im := openImage(t, ti, Config{Tiers: tt.tiers(ti), Metrics: m, Log: testLogger(t, logs)})
			for _, i := range []int{0, 1, 3} {
				mustRead(t, im, ti, i)
			}
			if diff := cmp.Diff(tt.want, im.Stats().Degraded); diff != "" {
				t.Errorf("Stats.Degraded (-want +got):\n%s", diff)
			}
			for _, r := range DegradedReasons {
				if got := metricValue(t, m.degraded.WithLabelValues(r)); got != float64(tt.want[r]) {
					t.Errorf("lode_agent_image_degraded_total{reason=%q} = %v, want %d", r, got, tt.want[r])
				}
				lines := strings.Count(logs.String(), "reason="+r)
				if want := min(tt.want[r], 1); int64(lines) != want {
					t.Errorf("%d log lines for reason %s, want %d:\n%s", lines, r, want, logs.String())
				}
			}
			if tt.want != nil && !strings.Contains(logs.String(), "lazy loading degraded") {
				t.Errorf("no degraded log line:\n%s", logs.String())
			}
		})
	}
}
