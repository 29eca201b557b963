package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet/fleettest"
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

// FleetClient leaves room on every node for each fetch the agent runs at
// once: --max-fetches concurrent fetches against a fleet with one slow node
// (paused: it answers nothing until resumed) skip none of its requests as
// busy, where cachefleet's default cap (16) would skip the rest.
func TestFleetClientRoomForEveryFetch(t *testing.T) {
	f := fleettest.Start(t, 5, fleettest.Options{})
	reg := prometheus.NewRegistry()
	const fetches = 32
	cl, err := Options{Fleet: f.URLs(), Fetches: fetches}.FleetClient(reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ct := bytes.Repeat([]byte("lode"), 1000)
	n := chunk.Name(sha256.Sum256(ct))
	ctx := context.Background()
	if err := cl.Fill(ctx, n, ct); err != nil {
		t.Fatal(err)
	}
	f.Pause(0)
	defer f.Resume(0)
	var wg sync.WaitGroup
	errs := make(chan error, fetches)
	for range fetches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cl.Fetch(ctx, n, nil); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("fetch with one slow node: %v", err)
	}
	var busy float64
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "lode_fleet_shard_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == "busy" {
					busy += m.GetCounter().GetValue()
				}
			}
		}
	}
	if busy != 0 {
		t.Errorf("%d concurrent fetches (Fetches = %d) skipped %v requests as busy, want 0", fetches, fetches, busy)
	}
}
