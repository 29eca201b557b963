package agent

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
)

// LeaseFleet is the part of the cache fleet an origin lease needs
// (cachefleet.Client): ask for the chunk's lease, and read the chunk.
type LeaseFleet interface {
	Lease(ctx context.Context, n chunk.Name, ttl time.Duration) (bool, error)
	Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error)
}

// LeaseStats counts what a Coordinate tier did.
type LeaseStats struct {
	Granted  int64 // origin reads made under a lease this worker got (or with the fleet unreachable)
	Waited   int64 // misses that found the lease held and waited for its fill
	Filled   int64 // of those, served by the fleet once the holder's fill landed
	Fallback int64 // of those, read from the origin after all (the wait ran out)
}

// coordinated is the origin tier behind fleet leases.
type coordinated struct {
	Tier
	fleet LeaseFleet
	wait  time.Duration

	granted, waited, filled, fallback atomic.Int64
}

// Coordinate returns origin guarded by the fleet's origin leases (issue #12):
// before reading chunk n from the origin, the worker asks the fleet for n's
// lease (held for wait). With it, or when the fleet cannot answer, it reads
// the origin (and the agent fills the fleet, as after any origin read).
// Without it another worker is reading n from the origin right now, so this
// one polls the fleet, backing off with jitter from 5 to 50 ms, for at most
// wait, and reads the origin itself only if the fill has not appeared by
// then. So while the fleet is empty, the origin sees each chunk about once
// however many workers miss it, and a reader waits at most wait longer
// than without leases.
//
// Put it outside the origin's rate and concurrency limits, so waiting
// workers spend none of the origin's budget. wait <= 0 returns origin
// unchanged. The bytes a poll gets from the fleet are verified by the
// agent like any origin bytes (Coordinate is no Wrapper).
func Coordinate(origin Tier, fleet LeaseFleet, wait time.Duration) Tier {
	if wait <= 0 || fleet == nil {
		return origin
	}
	return &coordinated{Tier: origin, fleet: fleet, wait: wait}
}

// CoordinateStats returns the counts of t if it was made by Coordinate.
func CoordinateStats(t Tier) (LeaseStats, bool) {
	c, ok := t.(*coordinated)
	if !ok {
		return LeaseStats{}, false
	}
	return LeaseStats{Granted: c.granted.Load(), Waited: c.waited.Load(), Filled: c.filled.Load(), Fallback: c.fallback.Load()}, true
}

// Unwrap returns the origin: what the leases guard. (A wait that ends in a
// fleet hit returns the fleet's bytes, which the agent verifies as any.)
func (c *coordinated) Unwrap() Tier { return c.Tier }

func (c *coordinated) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if ok, _ := c.fleet.Lease(ctx, n, c.wait); ok {
		c.granted.Add(1)
		return c.Tier.Fetch(ctx, n, dst)
	}
	c.waited.Add(1)
	deadline := time.Now().Add(c.wait)
	backoff := 5 * time.Millisecond
	for {
		d := min(time.Duration(float64(backoff)*(0.5+rand.Float64())), time.Until(deadline))
		if d <= 0 {
			break
		}
		if err := sleep(ctx, d); err != nil {
			return nil, err
		}
		if b, err := c.fleet.Fetch(ctx, n, dst); err == nil {
			c.filled.Add(1)
			return b, nil
		}
		backoff = min(2*backoff, 50*time.Millisecond)
	}
	c.fallback.Add(1)
	return c.Tier.Fetch(ctx, n, dst)
}

// sleep waits d or until ctx ends (its cause then).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
