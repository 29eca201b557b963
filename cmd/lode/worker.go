package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// workerOptions configure the read side: the agent's tiers and caches.
type workerOptions struct {
	cacheDir     string
	diskBytes    int64
	memBytes     int64
	fetchTimeout time.Duration
	readAhead    int
	fetches      int
	fleet        fleetOptions

	originConcurrency int
	originAttempts    int
	originRate        float64
	originBurst       int
	fleetConcurrency  int
	originLease       time.Duration
	// allowStoreSecret lets a worker run with a builder's keyring.
	allowStoreSecret bool
}

func (o *workerOptions) bind(f *pflag.FlagSet) {
	f.StringVar(&o.cacheDir, "cache-dir", "", "L1 disk cache of ciphertext chunks, shared by every image on this worker (default $LODE_HOME/cache)")
	f.Int64Var(&o.diskBytes, "cache-size", 8<<30, "L1 disk cache budget in bytes (0 disables the disk cache)")
	f.Int64Var(&o.memBytes, "mem-cache-size", 512<<20, "L1 memory cache budget in bytes of plaintext")
	f.DurationVar(&o.fetchTimeout, "fetch-timeout", 30*time.Second, "deadline for fetching one chunk across all tiers; reads fail with EIO after it")
	f.IntVar(&o.readAhead, "read-ahead", 4, "chunks to prefetch after sequential reads (0 disables)")
	f.IntVar(&o.fetches, "max-fetches", 32, "concurrent chunk fetches from the tiers")
	f.IntVar(&o.originConcurrency, "origin-concurrency", 32, "concurrent requests to the origin from this worker (0: unbounded)")
	f.IntVar(&o.originAttempts, "origin-attempts", 3, "tries per chunk fetch from the origin when it fails with a transient error (1: no retry)")
	f.Float64Var(&o.originRate, "origin-rate", 0, "origin requests per second from this worker, token bucket (0: unlimited); protects the origin when the fleet is empty")
	f.IntVar(&o.originBurst, "origin-burst", 64, "burst of the --origin-rate token bucket")
	f.IntVar(&o.fleetConcurrency, "fleet-concurrency", 0, "concurrent chunk reads from the fleet (0: unbounded)")
	f.DurationVar(&o.originLease, "origin-lease", 250*time.Millisecond, "with --fleet: before reading a chunk from the origin, take its lease from the fleet; if another worker holds it, wait up to this for its fill instead (0: off)")
	f.BoolVar(&o.allowStoreSecret, "allow-store-secret", false, "run although the keyring holds the store secret (a builder's keyring); workers should get one from `lode keys export`")
	o.fleet.bind(f)
}

// protectOrigin wraps the origin tier in the worker's concurrency and rate
// limits (issue #12: a worker never sends the origin more than it is allowed,
// however empty the fleet), and, with a fleet among tiers, in the fleet's
// origin leases (--origin-lease: many workers missing one chunk read the
// origin about once).
//
// The rate limit sits inside the concurrency limit: a request takes its token
// only once it holds a slot, so requests queued behind busy slots cannot
// bank tokens and reach the origin in a burst above the rate. The leases sit
// outside both, so a worker waiting for another's fill spends neither.
func (o workerOptions) protectOrigin(t agent.Tier, tiers []agent.Tier) agent.Tier {
	// Retries sit inside the concurrency limit too, and each try takes its own token.
	limited := agent.Limit(agent.Retry(agent.RateLimit(t, o.originRate, o.originBurst), o.originAttempts, 50*time.Millisecond), o.originConcurrency)
	if lf := leaseFleet(tiers); lf != nil {
		return agent.Coordinate(limited, lf, o.originLease)
	}
	return limited
}

// leaseFleet finds the fleet client among the cache tiers (through Limit).
func leaseFleet(tiers []agent.Tier) agent.LeaseFleet {
	for _, t := range tiers {
		for t != nil {
			if lf, ok := t.(agent.LeaseFleet); ok {
				return lf
			}
			w, ok := t.(agent.Wrapper)
			if !ok {
				break
			}
			t = w.Unwrap()
		}
	}
	return nil
}

// worker is an opened image and everything behind it.
type worker struct {
	agent    *agent.Agent
	image    *agent.Image
	manifest *manifest.Manifest
	pointer  store.Pointer
	tiers    []agent.Tier
	name     string
	closers  []func() error
}

func (w *worker) Close() error {
	var first error
	if w.image != nil {
		first = w.image.Close()
	}
	if w.agent != nil {
		if err := w.agent.Close(); first == nil {
			first = err
		}
	}
	for i := len(w.closers) - 1; i >= 0; i-- {
		if err := w.closers[i](); first == nil {
			first = err
		}
	}
	return first
}

// openWorker resolves tenant's image name and opens it through the tier
// stack: memory → disk → fleet (if configured) → origin.
func openWorker(ctx context.Context, o workerOptions, name string, reg prometheus.Registerer) (*worker, error) {
	if _, err := openWorkerKeyring(o.allowStoreSecret); err != nil {
		return nil, err
	}
	st, m, p, err := resolveImage(ctx, name)
	if err != nil {
		return nil, err
	}
	w := &worker{manifest: m, pointer: p, name: global.tenant + "/" + name}
	tiers, closers, err := o.cacheTiers(ctx, reg)
	if err != nil {
		return nil, err
	}
	w.closers = closers
	w.tiers = append(tiers, o.protectOrigin(agent.NewOrigin(st, p.Root), tiers))
	a, err := agent.New(o.agentConfig(w.tiers, reg))
	if err != nil {
		w.Close()
		return nil, err
	}
	w.agent = a
	im, err := a.Open(w.name, m)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("opening image %s: %w", w.name, err)
	}
	w.image = im
	return w, nil
}

// cacheTiers returns the tiers between the memory cache and the origin:
// the disk cache (unless disabled) and the fleet (if configured), with
// what closes them.
func (o workerOptions) cacheTiers(ctx context.Context, reg prometheus.Registerer) ([]agent.Tier, []func() error, error) {
	var tiers []agent.Tier
	if o.diskBytes > 0 {
		dc, err := agent.NewDiskCache(o.diskCacheDir(), o.diskBytes, logger)
		if err != nil {
			return nil, nil, err
		}
		tiers = append(tiers, dc)
	}
	fleet, closeFleet, err := o.fleet.open(ctx, reg)
	if err != nil {
		return nil, nil, err
	}
	if fleet == nil {
		return tiers, nil, nil
	}
	return append(tiers, agent.Limit(fleet, o.fleetConcurrency)), []func() error{closeFleet}, nil
}

// diskCacheDir is --cache-dir, default $LODE_HOME/cache.
func (o workerOptions) diskCacheDir() string {
	if o.cacheDir != "" {
		return o.cacheDir
	}
	return filepath.Join(global.home, "cache")
}

// agentConfig is the agent configuration the flags select over tiers.
func (o workerOptions) agentConfig(tiers []agent.Tier, reg prometheus.Registerer) agent.Config {
	c := agent.DefaultConfig()
	c.Mem = agent.NewMemCache(o.memBytes)
	c.Tiers = tiers
	c.FetchTimeout = o.fetchTimeout
	c.ReadAhead = o.readAhead
	c.MaxConcurrentFetches = o.fetches
	c.Log = logger
	if reg != nil {
		c.Metrics = agent.NewMetrics(reg)
	}
	return c
}

// device is the block device a frontend exports for w: the image itself, or
// a copy-on-write overlay over it when overlay names a file. It also starts
// prefetching the image's recorded start profile, if it has one. The
// returned close releases the overlay.
func (w *worker) device(ctx context.Context, overlay string, parallel int) (blockdev.Device, func() error, error) {
	if len(w.manifest.Hints) > 0 {
		go w.image.Prefetch(ctx, w.manifest.Hints, parallel)
	}
	if overlay == "" {
		return w.image, func() error { return nil }, nil
	}
	ov, err := blockdev.NewOverlay(w.image, overlay)
	if err != nil {
		return nil, nil, err
	}
	return ov, ov.Close, nil
}
