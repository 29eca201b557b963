package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachefleet/fleettest"
	"github.com/lode-dev/lode/internal/chunk"
)

// stampTier records when each Fetch reached it (after every limiter in
// front of it) and counts them per chunk.
type stampTier struct {
	Tier
	mu     sync.Mutex
	stamps []time.Time
	per    map[chunk.Name]int
}

func (s *stampTier) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	s.mu.Lock()
	s.stamps = append(s.stamps, time.Now())
	s.per[n]++
	s.mu.Unlock()
	return s.Tier.Fetch(ctx, n, dst)
}

// maxInWindow returns the most stamps within any window of length d.
func maxInWindow(ts []time.Time, d time.Duration) int {
	best, lo := 0, 0
	for hi := range ts {
		for ts[hi].Sub(ts[lo]) >= d {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// TestStormEmptyFleet starts many images at once on several workers whose
// fleet is empty (every chunk misses it), each worker with its origin behind
// Limit and RateLimit and starts behind an Admission.
// The origin must never see more than the configured rate from any worker,
// no chunk may reach the origin more than once per worker, and every start
// either reads correct bytes or is refused with ErrTooManyStarts.
func TestStormEmptyFleet(t *testing.T) {
	const (
		workers       = 3
		startsPer     = 24
		maxStarts     = 3
		rate          = 40.0 // origin requests/s per worker
		burst         = 4
		chunkSize     = 64 << 10
		chunks        = 48
		startWait     = 150 * time.Millisecond
		streamsPerRun = 4
	)
	img := buildImage(t, chunkSize, chunks*chunkSize, nil, 12)
	fl := fleettest.Start(t, 3, fleettest.Options{MemBytes: 32 << 20})

	type wk struct {
		a      *Agent
		adm    *Admission
		reg    *prometheus.Registry
		origin *stampTier
	}
	var ws []wk
	for range workers {
		client, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: fl.URLs(), M: 2, K: 3})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		origin := &stampTier{Tier: NewOrigin(img.st, testRoot), per: map[chunk.Name]int{}}
		reg := prometheus.NewRegistry()
		m := NewMetrics(reg)
		a, err := New(Config{
			Mem: NewMemCache(64 << 20),
			// The rate limit is the inner decorator: a request takes its
			// token right before it reaches the origin. (Outside Limit, a
			// token is taken before the wait for a slot, and requests
			// queued on the slots reach the origin in bunches above the
			// rate: see docs/scale.md.)
			Tiers:   []Tier{client, Limit(RateLimit(origin, rate, burst), 8)},
			Metrics: m,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		ws = append(ws, wk{a: a, adm: NewAdmission(maxStarts, startWait, m), reg: reg, origin: origin})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var ok, refused atomic.Int64
	errs := make(chan error, workers*startsPer)
	var wg sync.WaitGroup
	for w, x := range ws {
		for s := range startsPer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("w%d/start%d", w, s)
				release, err := x.adm.Acquire(ctx, name)
				if errors.Is(err, ErrTooManyStarts) {
					refused.Add(1)
					return
				}
				if err != nil {
					errs <- err
					return
				}
				defer release()
				im, err := x.a.Open(name, img.m)
				if err != nil {
					errs <- err
					return
				}
				defer im.Close()
				got := make([]byte, len(img.plain))
				var rg sync.WaitGroup
				for k := range streamsPerRun {
					rg.Add(1)
					go func() {
						defer rg.Done()
						for c := k; c < chunks; c += streamsPerRun {
							off := int64(c) * chunkSize
							if _, err := im.ReadAt(ctx, got[off:off+chunkSize], off); err != nil {
								errs <- fmt.Errorf("start %s: %w", name, err)
								return
							}
						}
					}()
				}
				rg.Wait()
				if !bytes.Equal(got, img.plain) {
					errs <- fmt.Errorf("start %s read wrong bytes", name)
					return
				}
				ok.Add(1)
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("start failed other than by admission: %v", err)
	}
	if ok.Load() == 0 {
		t.Error("no start succeeded")
	}
	if refused.Load() == 0 {
		t.Errorf("no start was refused: %d starts on %d slots per worker should overflow the %v wait", startsPer, maxStarts, startWait)
	}

	var metricRefused float64
	total := 0
	perChunk := map[chunk.Name]int{}
	for w, x := range ws {
		metricRefused += counterValue(t, x.reg, "lode_agent_starts_rejected_total")
		x.origin.mu.Lock()
		stamps := x.origin.stamps
		for n, k := range x.origin.per {
			perChunk[n] += k
			if k > 1 {
				t.Errorf("worker %d fetched chunk %s from the origin %d times, want once (single flight, memory cache)", w, n, k)
			}
		}
		x.origin.mu.Unlock()
		total += len(stamps)
		// A token bucket admits at most burst + rate·d requests in any
		// window d; allow 1 for a stamp taken late after its token.
		if got, limit := maxInWindow(stamps, time.Second), burst+int(rate)+1; got > limit {
			t.Errorf("worker %d: %d origin requests within one second, limit %d (rate %.0f/s, burst %d)", w, got, limit, rate, burst)
		}
		if got, limit := maxInWindow(stamps, 250*time.Millisecond), burst+int(rate/4)+1; got > limit {
			t.Errorf("worker %d: %d origin requests within 250 ms, limit %d", w, got, limit)
		}
	}
	if got := int64(metricRefused); got != refused.Load() {
		t.Errorf("lode_agent_starts_rejected_total = %d, refused starts = %d", got, refused.Load())
	}
	for n, k := range perChunk {
		if k > workers {
			t.Errorf("chunk %s reached the origin %d times from %d workers", n, k, workers)
		}
	}
	if total == 0 || len(perChunk) != chunks {
		t.Errorf("origin saw %d requests for %d chunks, want every one of %d chunks", total, len(perChunk), chunks)
	}
	t.Logf("%d starts ok, %d refused; origin: %d requests for %d chunks (%.2f per chunk, bound %d)",
		ok.Load(), refused.Load(), total, len(perChunk), float64(total)/float64(len(perChunk)), workers)
}

// counterValue returns the sum of the counter name in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}
