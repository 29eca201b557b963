package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/certs"
	"github.com/lode-dev/lode/internal/trace"
)

// Options configure a worker's read side: the agent's caches and the tiers
// below them. Every field is a flag of lode mount, run, serve-nbd,
// serve-vhost, vm and agent (cmd/lode binds them); the zero value of a limit
// means unlimited.
type Options struct {
	// CacheDir is the L1 disk cache's directory; DiskBytes its budget (0:
	// no disk cache).
	CacheDir  string
	DiskBytes int64
	// MemBytes is the L1 memory cache's budget of plaintext.
	MemBytes int64
	// FetchTimeout bounds one chunk fetch across all tiers.
	FetchTimeout time.Duration
	// ReadAhead is the chunks prefetched after sequential reads; Fetches the
	// concurrent chunk fetches from the tiers.
	ReadAhead, Fetches int

	// Fleet lists the cache fleet's nodes (none: no fleet tier), coded
	// FleetM of FleetK; FleetConcurrency bounds concurrent fleet reads.
	Fleet            []string
	FleetM, FleetK   int
	FleetConcurrency int
	// FleetTLS names the worker's certificate, key and the fleet CA: with
	// them the fleet client speaks mutual TLS to the nodes (re-read when
	// the files rotate). Empty: plain HTTP.
	FleetTLS certs.Files

	// OriginConcurrency, OriginAttempts, OriginRate and OriginBurst protect
	// the origin (see ProtectOrigin); OriginLease is the fleet lease wait
	// (0: no leases).
	OriginConcurrency int
	OriginAttempts    int
	OriginRate        float64
	OriginBurst       int
	OriginLease       time.Duration

	// Trace, if not empty, is a file to write the fetch trace to
	// (internal/trace): one JSON line per chunk fetch and per read.
	Trace string

	// LearnProfile records what each start of an image reads and publishes
	// it as the image's learned startup profile (internal/profile) while
	// the profile has fewer than profile.MaxStarts starts
	// (--learn-profile). Learned profiles are prefetched either way.
	LearnProfile bool

	// AllowStoreSecret lets Open and NewDaemon run with a keyring that holds
	// the store secret (a builder's); they refuse one otherwise (keys.go).
	AllowStoreSecret bool
}

// Parts lets a caller supply what NewStack would otherwise build.
// bench/starts does, to count and delay the tiers it measures.
type Parts struct {
	// Fleet replaces the client NewStack builds from Options.Fleet. Its
	// chain of agent.Wrapper must reach an agent.LeaseFleet for leases.
	Fleet agent.Tier
	// WrapOrigin, if set, wraps the limited origin inside the leases.
	WrapOrigin func(agent.Tier) agent.Tier
	// LocalOrigin: the origin is a store on this machine's disk
	// (onLocalDisk). The disk cache then serves what it holds but is not
	// filled from the origin (agent.NoFill): it would be a second copy on
	// the same disk, written while the start reads.
	LocalOrigin bool
}

// Stack is a worker's chunk reader: one agent over memory, disk, fleet and
// origin. Every image of the worker is opened on Agent.
type Stack struct {
	Agent   *agent.Agent
	Mem     *agent.MemCache
	Disk    *agent.DiskCache   // nil without a disk cache
	Fleet   *cachefleet.Client // nil without a fleet, or when Parts.Fleet was given
	Origin  agent.Tier         // the origin as the agent reads it (limits, retries, leases)
	Tiers   []agent.Tier       // below memory, in order: disk, fleet, origin
	Metrics *agent.Metrics     // nil when no registry was given
	Trace   *trace.Recorder    // the fetch trace; nil without Options.Trace

	closers []func() error
}

// NewStack builds the tier stack every worker uses — lode mount, run,
// serve-nbd, serve-vhost, vm, the agent daemon, the snapshotter and
// bench/starts: memory → disk (if DiskBytes > 0) → fleet (if configured,
// behind Limit(FleetConcurrency)) → ProtectOrigin(origin). origin is the
// raw origin: agent.NewOrigin for one image, agent.Origins for a daemon.
// Metrics are registered on reg when it is not nil.
func NewStack(ctx context.Context, o Options, origin agent.Tier, reg prometheus.Registerer, log *slog.Logger, p Parts) (*Stack, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stack{}
	if o.DiskBytes > 0 {
		dc, err := agent.NewDiskCache(o.CacheDir, o.DiskBytes, log)
		if err != nil {
			return nil, err
		}
		s.Disk = dc
		if p.LocalOrigin {
			s.Tiers = append(s.Tiers, agent.NoFill(dc))
		} else {
			s.Tiers = append(s.Tiers, dc)
		}
	}
	fleet := p.Fleet
	if fleet == nil && len(o.Fleet) > 0 {
		cl, err := o.FleetClient(reg, log)
		if err != nil {
			return nil, err
		}
		s.Fleet, fleet = cl, cl
		s.closers = append(s.closers, cl.Close)
	}
	if fleet != nil {
		s.Tiers = append(s.Tiers, agent.Limit(fleet, o.FleetConcurrency))
	}
	s.Origin = o.ProtectOrigin(origin, leaseFleet(s.Tiers), p.WrapOrigin)
	s.Tiers = append(s.Tiers, s.Origin)
	c := agent.DefaultConfig()
	s.Mem = agent.NewMemCache(o.MemBytes)
	c.Mem = s.Mem
	c.Tiers = s.Tiers
	c.FetchTimeout = o.FetchTimeout
	c.ReadAhead = o.ReadAhead
	c.MaxConcurrentFetches = o.Fetches
	c.Log = log
	if reg != nil {
		s.Metrics = agent.NewMetrics(reg)
		c.Metrics = s.Metrics
	}
	if o.Trace != "" {
		tr, err := trace.Create(o.Trace)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Trace, c.Trace = tr, tr
		s.closers = append(s.closers, tr.Close)
	}
	a, err := agent.New(c)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.Agent = a
	return s, nil
}

// ProtectOrigin wraps the origin tier as every worker reads it (issue #12:
// a worker never sends the origin more than it is allowed, however empty
// the fleet). This is the one place the order is decided:
//
//		Coordinate(wrap(Limit(Retry(RateLimit(origin)))), fleet)
//
//	  - RateLimit (OriginRate, OriginBurst) sits inside the concurrency limit:
//	    a request takes its token only once it holds a slot, so requests
//	    queued behind busy slots cannot bank tokens and reach the origin in a
//	    burst above the rate;
//	  - Retry (OriginAttempts) sits inside the concurrency limit too, and
//	    each try takes its own token;
//	  - Limit (OriginConcurrency) bounds the requests in flight;
//	  - wrap, if not nil, is the caller's (bench/starts' second look);
//	  - Coordinate (OriginLease, with a fleet) sits outside all of them, so a
//	    worker waiting for another's fill spends neither a slot nor a token.
func (o Options) ProtectOrigin(origin agent.Tier, fleet agent.LeaseFleet, wrap func(agent.Tier) agent.Tier) agent.Tier {
	t := agent.Limit(agent.Retry(agent.RateLimit(origin, o.OriginRate, o.OriginBurst), o.OriginAttempts, 50*time.Millisecond), o.OriginConcurrency)
	if wrap != nil {
		t = wrap(t)
	}
	if fleet != nil {
		return agent.Coordinate(t, fleet, o.OriginLease)
	}
	return t
}

// FleetClient returns the fleet client of o.Fleet that NewStack builds
// (bench/starts builds its own with it, to wrap it): coded FleetM of FleetK,
// mutual TLS with FleetTLS, metrics on reg when not nil, and room for every
// fetch the agent runs at once (o.Fetches) to wait on each node: a start's
// prefetch sends that many at once, and with cachefleet's default cap of
// 16 healthy nodes were skipped as busy, fleet hits became misses and the
// start read the origin (docs/benchmarks.md, issue #22).
func (o Options) FleetClient(reg prometheus.Registerer, log *slog.Logger) (*cachefleet.Client, error) {
	c := cachefleet.ClientConfig{Nodes: o.Fleet, M: o.FleetM, K: o.FleetK, Log: log,
		MaxWaiting: max(cachefleet.DefaultMaxWaiting, o.Fetches)}
	if o.FleetTLS != (certs.Files{}) {
		r, err := certs.NewReloader(o.FleetTLS)
		if err != nil {
			return nil, fmt.Errorf("fleet TLS: %w", err)
		}
		c.TLS = r.ClientConfig(certs.RoleNode, "")
	}
	if reg != nil {
		c.Metrics = cachefleet.NewClientMetrics(reg)
	}
	return cachefleet.NewClient(c)
}

// leaseFleet finds the fleet client among the cache tiers (through
// decorators that unwrap).
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

// Close closes the agent, then the fleet client.
func (s *Stack) Close() error {
	var errs []error
	if s.Agent != nil {
		errs = append(errs, s.Agent.Close())
	}
	for i := len(s.closers) - 1; i >= 0; i-- {
		errs = append(errs, s.closers[i]())
	}
	return errors.Join(errs...)
}

// LeaseStats are the origin leases' counters (zero without leases).
func (s *Stack) LeaseStats() agent.LeaseStats {
	st, _ := agent.CoordinateStats(s.Origin)
	return st
}
