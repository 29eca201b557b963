package worker

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// leaseTier is a fleet tier that also grants leases.
type leaseTier struct{ agent.Tier }

func (leaseTier) Lease(context.Context, chunk.Name, time.Duration) (bool, error) { return true, nil }

// wrapped hides a tier behind a decorator that unwraps, as bench/starts'
// counters do.
type wrapped struct{ agent.Tier }

func (w wrapped) Unwrap() agent.Tier { return w.Tier }

// NewStack composes memory → disk → fleet → origin, and puts the origin's
// leases on only with a fleet (found through decorators) and a lease time.
func TestNewStack(t *testing.T) {
	st := mem.New()
	origin := agent.NewOrigin(st, store.RootIDFor(1))
	fleet := leaseTier{agent.NewOrigin(st, store.RootIDFor(2))}
	tests := []struct {
		name      string
		disk      bool
		fleet     agent.Tier
		lease     time.Duration
		wantTiers int
		wantLease bool
	}{
		{"origin only", false, nil, 250 * time.Millisecond, 1, false},
		{"disk", true, nil, 250 * time.Millisecond, 2, false},
		{"disk and fleet", true, fleet, 250 * time.Millisecond, 3, true},
		{"fleet behind a decorator", false, wrapped{fleet}, 250 * time.Millisecond, 2, true},
		{"fleet, leases off", false, fleet, 0, 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{MemBytes: 1 << 20, FetchTimeout: time.Second, Fetches: 2, OriginLease: tt.lease, OriginAttempts: 3, OriginConcurrency: 4}
			if tt.disk {
				o.CacheDir, o.DiskBytes = filepath.Join(t.TempDir(), "cache"), 1<<20
			}
			s, err := NewStack(context.Background(), o, origin, nil, nil, Parts{Fleet: tt.fleet})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if len(s.Tiers) != tt.wantTiers || s.Tiers[len(s.Tiers)-1] != s.Origin {
				t.Errorf("tiers %v, want %d ending with the origin", s.Tiers, tt.wantTiers)
			}
			if (s.Disk != nil) != tt.disk {
				t.Errorf("disk cache %v, want one: %v", s.Disk, tt.disk)
			}
			if _, ok := agent.CoordinateStats(s.Origin); ok != tt.wantLease {
				t.Errorf("origin behind leases = %v, want %v", ok, tt.wantLease)
			}
			if s.Agent == nil || s.Mem == nil {
				t.Errorf("stack without an agent or a memory cache")
			}
		})
	}
}
