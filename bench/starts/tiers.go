package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/chunk"
)

// Tier decorators of the load generator. They wrap the real tiers (the
// cachefleet client, agent.NewOrigin over a file store); nothing here is
// production code.

// z999 is the standard normal quantile of 0.999.
const z999 = 3.0902323

// latency is a log-normal distribution fitted to a median and a p99.9.
type latency struct {
	median time.Duration
	sigma  float64
}

func fitLatency(median, p999 time.Duration) latency {
	return latency{median: median, sigma: math.Log(float64(p999)/float64(median)) / z999}
}

func (l latency) sample() time.Duration {
	return time.Duration(float64(l.median) * math.Exp(l.sigma*rand.NormFloat64()))
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// delayed pads every Fetch to a latency drawn from lat: the real call runs
// first, then the rest of the drawn latency is slept. A call slower than its
// draw is not delayed further, so the tier's latency is max(real, drawn).
type delayed struct {
	agent.Tier
	lat latency
	tl  *timeline // if set, every call's real and drawn latency is recorded
}

// Unwrap passes the tier's bytes through unchanged (agent.Wrapper), so the
// agent sees the fleet client's name verification as cmd/lode's wiring does.
func (d *delayed) Unwrap() agent.Tier { return d.Tier }

func (d *delayed) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	want := d.lat.sample()
	t0 := time.Now()
	b, err := d.Tier.Fetch(ctx, n, dst)
	real := time.Since(t0)
	if d.tl != nil {
		d.tl.fetched(fetchTime{at: d.tl.since(), real: real, drawn: want})
	}
	if serr := sleep(ctx, want-real); serr != nil && err == nil {
		return nil, fmt.Errorf("fetching chunk %s from %s: %w", n, d.Tier.Name(), serr)
	}
	return b, err
}

// errInjected is the error a faulty origin returns.
var errInjected = errors.New("injected origin error")

// faulty injects origin faults: a share of requests fail at once, and during
// a stall every request waits for the stall to end (or its deadline).
type faulty struct {
	agent.Tier
	errPPM     atomic.Int64 // errors per million requests
	stallUntil atomic.Int64 // unix ns
}

func (f *faulty) setErrorRate(p float64) { f.errPPM.Store(int64(p * 1e6)) }
func (f *faulty) stall(d time.Duration)  { f.stallUntil.Store(time.Now().Add(d).UnixNano()) }

func (f *faulty) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if until := f.stallUntil.Load(); until != 0 {
		if err := sleep(ctx, time.Until(time.Unix(0, until))); err != nil {
			return nil, fmt.Errorf("fetching chunk %s from stalled %s: %w", n, f.Tier.Name(), err)
		}
	}
	if p := f.errPPM.Load(); p > 0 && rand.Int64N(1e6) < p {
		return nil, fmt.Errorf("fetching chunk %s from %s: %w", n, f.Tier.Name(), errInjected)
	}
	return f.Tier.Fetch(ctx, n, dst)
}

// counted counts Fetch calls (and successful ones) into the run's timeline,
// and, while tracking is on, the calls per chunk (the cross-worker duplicate
// measure of an empty-fleet storm).
type counted struct {
	agent.Tier
	tl     *timeline
	kind   int // tierFleet or tierOrigin
	worker int

	track *chunkCounts // nil: no per-chunk counts
}

// Unwrap: see delayed.Unwrap.
func (c *counted) Unwrap() agent.Tier { return c.Tier }

func (c *counted) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	c.tl.request(c.kind, c.worker)
	if c.track != nil {
		c.track.add(n)
	}
	b, err := c.Tier.Fetch(ctx, n, dst)
	if err == nil {
		c.tl.hit(c.kind)
	}
	return b, err
}

// chunkCounts counts requests per chunk name while on.
type chunkCounts struct {
	on atomic.Bool
	mu sync.Mutex
	m  map[chunk.Name]int
}

func (c *chunkCounts) add(n chunk.Name) {
	if !c.on.Load() {
		return
	}
	c.mu.Lock()
	c.m[n]++
	c.mu.Unlock()
}

// start clears the counts and starts counting.
func (c *chunkCounts) start() {
	c.mu.Lock()
	c.m = map[chunk.Name]int{}
	c.mu.Unlock()
	c.on.Store(true)
}

// histogram stops counting and returns how many chunks were requested k
// times, for every k (index k), and the total requests.
func (c *chunkCounts) histogram() (h []int, total int) {
	c.on.Store(false)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.m {
		for len(h) <= k {
			h = append(h, 0)
		}
		h[k]++
		total += k
	}
	return h, total
}

// secondLook is the cross-worker mitigation under test: before a fleet miss
// goes to the origin, wait a random time up to jitter and ask the fleet
// again; a worker that missed the same chunk slightly earlier has probably
// fetched it from the origin and filled the fleet meanwhile. It sits in
// front of the worker's (rate-limited) origin tier.
type secondLook struct {
	agent.Tier            // the origin
	fleet      agent.Tier // the fleet, without latency padding counted twice
	jitter     time.Duration
	saved      *atomic.Int64 // origin requests avoided
}

func (s *secondLook) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if err := sleep(ctx, rand.N(s.jitter)); err != nil {
		return nil, fmt.Errorf("fetching chunk %s: waiting to look in the fleet again: %w", n, err)
	}
	if b, err := s.fleet.Fetch(ctx, n, dst); err == nil {
		s.saved.Add(1)
		return b, nil
	}
	return s.Tier.Fetch(ctx, n, dst)
}
