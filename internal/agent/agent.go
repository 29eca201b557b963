package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/trace"
)

// Config configures an Agent. The zero value of each field selects the
// default noted beside it, except ReadAhead, where zero disables read-ahead
// (DefaultConfig turns it on).
type Config struct {
	// Mem is the memory cache of plaintext, shared by images; nil for none.
	Mem *MemCache
	// Tiers are the sources of ciphertext, fastest first, e.g. disk, fleet,
	// origin. A chunk a lower tier serves is written back to the ones above.
	Tiers []Tier
	// FetchTimeout bounds one chunk's fetch across all tiers (default 30s:
	// several origin round trips at their p99.9, short enough that a dead
	// origin turns into EIO instead of a hung container).
	FetchTimeout time.Duration
	// MaxConcurrentFetches bounds tier fetches in flight (default 32: enough
	// to keep an origin's latency hidden behind a container's parallel reads
	// without opening hundreds of connections).
	MaxConcurrentFetches int
	// ReadAhead is how many chunks to prefetch once reads move through the
	// image sequentially (from the second read in a row that reaches the
	// next chunk; 0 disables; DefaultConfig uses 4, 2 MiB at the default
	// chunk size).
	ReadAhead int
	// Log receives problems (tier errors, corrupt chunks); nil discards.
	Log *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
	// Now is the clock for latency measurements (default time.Now).
	Now func() time.Time
	// Trace, if not nil, records every fetch and every read (internal/trace,
	// lode ... --trace FILE).
	Trace *trace.Recorder
}

// DefaultConfig returns a Config with every default filled in and read-ahead
// on; the caller adds Mem, Tiers, Log and Metrics.
func DefaultConfig() Config {
	return Config{
		FetchTimeout:         30 * time.Second,
		MaxConcurrentFetches: 32,
		ReadAhead:            4,
		Now:                  time.Now,
	}
}

// Agent reads chunks through the tiers for every image opened on it: it
// holds the single-flight table (one fetch per chunk however many images and
// readers miss it) and the bound on concurrent fetches. It is safe for
// concurrent use.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	tiers []tierState
	memM  tierMetrics
	am    agentMetrics

	sem chan struct{} // a slot per tier fetch in flight
	// startSem bounds the demand fetches of starting images (Image.SetStarting)
	// to three quarters of sem, so a storm of new starts never takes the
	// last quarter of the fetch slots from running containers' reads.
	startSem chan struct{}
	fillSem  chan struct{} // a slot per write-back in flight

	// ctx is the parent of every fetch; Close cancels it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // fetch goroutines

	mu     sync.Mutex
	calls  map[chunk.Ref]*call
	closed bool

	bufs freeList // ciphertext buffers, one per fetch in flight

	deg degradedState // per-image degraded reasons (degraded.go)
}

type tierState struct {
	t        Tier
	m        tierMetrics
	verified bool // t is a NameVerifier: its bytes are already matched to their names
	fleet    bool // t is the cache fleet (FleetRole)
	origin   bool // t is the origin (OriginRole)
}

// call is one fetch of one chunk, shared by every reader that misses it
// while it runs. Fields above done are set before done is closed and are
// read-only afterwards.
type call struct {
	ref    chunk.Ref
	key    chunk.Ref // its key in the call table and memory cache (cacheRef)
	zstd   bool      // the sealed plaintext is a zstd frame (manifest.CompressionZstd)
	size   int       // expected plaintext length
	image  string    // the image that started it, for logs
	start  bool      // started by a demand read of a starting image: takes a startSem slot too
	ctx    context.Context
	cancel context.CancelFunc

	plain       []byte
	err         error
	tier        int // index of the tier that served, -1 if none
	ctLen       int
	verifyFails int
	done        chan struct{}

	// Guarded by Agent.mu.
	waiters  int
	credited []*Image
	noMem    bool // a background fill's fetch: keep it out of the memory cache unless a reader joins

	tr *callTrace // nil unless the agent traces (Config.Trace)
}

// callTrace is what the fetch trace records of a call. waited is guarded
// by Agent.mu; started is written before done is closed.
type callTrace struct {
	id             uint64
	cause          trace.Cause
	off, len       int64
	asked, started int64
	waited         []uint64
}

// New returns an Agent with c's defaults applied.
func New(c Config) (*Agent, error) {
	if c.FetchTimeout == 0 {
		c.FetchTimeout = 30 * time.Second
	}
	if c.MaxConcurrentFetches == 0 {
		c.MaxConcurrentFetches = 32
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	var errs []error
	if c.FetchTimeout < 0 {
		errs = append(errs, fmt.Errorf("fetch timeout %v must not be negative", c.FetchTimeout))
	}
	if c.MaxConcurrentFetches < 0 {
		errs = append(errs, fmt.Errorf("max concurrent fetches %d must not be negative", c.MaxConcurrentFetches))
	}
	if c.ReadAhead < 0 {
		errs = append(errs, fmt.Errorf("read-ahead %d must not be negative", c.ReadAhead))
	}
	if len(c.Tiers) == 0 {
		errs = append(errs, errors.New("no tiers: need at least the origin"))
	}
	for i, t := range c.Tiers {
		if t == nil {
			errs = append(errs, fmt.Errorf("tier %d is nil", i))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("configuring agent: %w", err)
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:     c,
		log:     log.With(slog.String("component", "agent")),
		memM:    c.Metrics.forTier("mem"),
		am:      c.Metrics.agent(),
		sem:     make(chan struct{}, c.MaxConcurrentFetches),
		bufs:    make(freeList, c.MaxConcurrentFetches),
		fillSem: make(chan struct{}, c.MaxConcurrentFetches),
		calls:   make(map[chunk.Ref]*call),
	}
	a.startSem = make(chan struct{}, max(1, c.MaxConcurrentFetches-reserveFor(c.MaxConcurrentFetches)))
	a.ctx, a.cancel = context.WithCancelCause(context.Background())
	for _, t := range c.Tiers {
		a.tiers = append(a.tiers, tierState{t: t, m: c.Metrics.forTier(t.Name()), verified: verifiesNames(t), fleet: isFleet(t), origin: isOrigin(t)})
	}
	return a, nil
}

// Close cancels every fetch and write-back in flight and waits for them.
// Images opened on the agent fail their reads afterwards.
func (a *Agent) Close() error {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.cancel(ErrClosed) // fetches cut short say why: context.Cause is ErrClosed
	a.wg.Wait()
	return nil
}

// idle waits until no fetch or write-back is running (for tests; the caller
// must not start new ones meanwhile).
func (a *Agent) idle() { a.wg.Wait() }

// Open returns the image described by m, read through a. name ("tenant/
// image") identifies it in logs and errors.
func (a *Agent) Open(name string, m *manifest.Manifest) (*Image, error) {
	return newImage(a, false, name, m)
}

// NewImage returns an image read through its own Agent configured by c; Close
// on the image closes that agent too. Use one Agent and Agent.Open to share
// the single-flight table and fetch bound between images.
func NewImage(name string, m *manifest.Manifest, c Config) (*Image, error) {
	a, err := New(c)
	if err != nil {
		return nil, fmt.Errorf("opening image %s: %w", name, err)
	}
	im, err := newImage(a, true, name, m)
	if err != nil {
		a.Close()
		return nil, err
	}
	return im, nil
}

// join attaches a reader of image im to the fetch of ref, starting one if
// none runs. It returns the call to wait on, or the plaintext if the memory
// cache got it meanwhile, or neither if the agent is closed.
//
// With prefetch, join starts a fetch only if a fetch slot is free right now
// (leaving a quarter of them to demand reads) and returns nil if the chunk is
// cached, already in flight, or no slot is free; full reports the last case.
//
// noMem marks a fetch started here as a background fill's: its plaintext is
// not put in the memory cache (so a fill does not flush the hot set) unless a
// demand reader joins it before it finishes.
//
// cause says why, for the fetch trace (Config.Trace).
func (a *Agent) join(ref chunk.Ref, size int, im *Image, prefetch, noMem bool, cause trace.Cause, rt *readTrace) (c *call, plain []byte, full bool) {
	zstd := im.m.Compression == manifest.CompressionZstd
	key := cacheRef(ref, zstd)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, nil, false
	}
	if c := a.calls[key]; c != nil {
		if prefetch {
			return nil, nil, false
		}
		c.waiters++
		c.noMem = false
		if c.tr != nil && rt != nil {
			c.tr.waited = append(c.tr.waited, rt.id)
		}
		return c, nil, false
	}
	if a.cfg.Mem != nil {
		if p, ok := a.cfg.Mem.Get(key); ok {
			return nil, p, false
		}
	}
	if prefetch {
		reserve := reserveFor(cap(a.sem))
		if len(a.sem) > cap(a.sem)-reserve-1 {
			return nil, nil, true
		}
		select {
		case a.sem <- struct{}{}:
		default:
			return nil, nil, true
		}
	}
	c = &call{ref: ref, key: key, zstd: zstd, size: size, image: im.name, start: !prefetch && im.starting.Load(),
		tier: -1, done: make(chan struct{}), waiters: 1, noMem: noMem}
	c.ctx, c.cancel = context.WithTimeout(a.ctx, a.cfg.FetchTimeout)
	if tr := a.cfg.Trace; tr != nil {
		c.tr = &callTrace{id: tr.NextID(), cause: cause, asked: tr.Now()}
		if rt != nil {
			c.tr.off, c.tr.len = rt.off, rt.len
			if !prefetch {
				c.tr.waited = []uint64{rt.id}
			}
		}
		if prefetch {
			c.tr.started = c.tr.asked // it holds its slot already
		}
	}
	a.calls[key] = c
	a.wg.Add(1)
	go a.run(c, prefetch)
	return c, nil, false
}

// reserveFor is how many of n fetch slots are kept from low-priority
// fetches (read-ahead, prefetch, fill) and from starting images: a quarter,
// at least one.
func reserveFor(n int) int { return max(1, n/4) }

// wait waits for c on behalf of one reader. If ctx ends first the reader
// leaves, and the fetch is cancelled when it was the last one waiting.
func (a *Agent) wait(ctx context.Context, c *call) error {
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
	}
	a.leave(c)
	return ctx.Err()
}

// leave detaches one reader from c, cancelling the fetch if it was the last.
func (a *Agent) leave(c *call) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c.waiters--
	if c.waiters == 0 {
		select {
		case <-c.done:
		default:
			c.cancel()
			if a.calls[c.key] == c {
				delete(a.calls, c.key)
			}
		}
	}
}

// run performs call c: take a fetch slot (unless holding one), try the
// tiers, publish the result, then write the ciphertext back to faster tiers.
func (a *Agent) run(c *call, holding bool) {
	defer a.wg.Done()
	defer c.cancel()
	if !holding {
		if c.start {
			select {
			case a.startSem <- struct{}{}:
				defer func() { <-a.startSem }()
			case <-c.ctx.Done():
				c.err = fmt.Errorf("fetching chunk %s: waiting for a fetch slot for a starting image: %w: %w", c.ref.Name, ErrIO, context.Cause(c.ctx))
				a.finish(c)
				return
			}
		}
		select {
		case a.sem <- struct{}{}:
		case <-c.ctx.Done():
			c.err = fmt.Errorf("fetching chunk %s: waiting for a fetch slot: %w: %w", c.ref.Name, ErrIO, context.Cause(c.ctx))
			a.finish(c)
			return
		}
		if c.tr != nil {
			c.tr.started = a.cfg.Trace.Now()
		}
	}
	bp := a.buffer(c.size + chunk.Overhead + zstdSlack)
	ct := a.fetchSafe(c, *bp)
	<-a.sem
	a.finish(c)
	if c.err == nil && c.tier > 0 {
		a.fill(c, ct)
	}
	if ct != nil {
		*bp = ct[:0]
	}
	a.bufs.put(bp)
}

func (a *Agent) buffer(n int) *[]byte {
	return a.bufs.get(n)
}

// finish publishes c's result and removes it from the table.
func (a *Agent) finish(c *call) {
	a.mu.Lock()
	noMem := c.noMem
	a.mu.Unlock()
	if c.err == nil && a.cfg.Mem != nil && !noMem {
		a.cfg.Mem.Put(c.key, c.plain)
		if a.am.memBytes != nil {
			a.am.memBytes.Set(float64(a.cfg.Mem.Bytes()))
		}
	}
	a.mu.Lock()
	if a.calls[c.key] == c {
		delete(a.calls, c.key)
	}
	if c.tr != nil {
		// Before done: a reader that returns has its fetches in the trace.
		a.traceFetch(c, c.tr.waited)
	}
	close(c.done)
	a.mu.Unlock()
}

// traceFetch records c, complete, in the fetch trace.
func (a *Agent) traceFetch(c *call, waited []uint64) {
	tr := a.cfg.Trace
	e := trace.Event{Kind: trace.KindFetch, ID: c.tr.id, Image: c.image, Chunk: c.tr.cause.Chunk,
		Why: c.tr.cause.Why, Read: c.tr.cause.Read, Hint: c.tr.cause.Hint, Off: c.tr.off, Len: c.tr.len,
		Asked: c.tr.asked, Started: c.tr.started, Done: tr.Now(), Waited: waited}
	if c.err != nil {
		e.Err = c.err.Error()
	} else if c.tier >= 0 {
		e.Tier, e.Bytes = a.tiers[c.tier].t.Name(), c.ctLen
	}
	tr.Emit(e)
}

// fetch tries the tiers in order and sets c's result. It returns the
// verified ciphertext (in buf when it fitted) for write-back.
func (a *Agent) fetch(c *call, buf []byte) []byte {
	name := c.ref.Name
	var causes []error
	for i, ts := range a.tiers {
		if err := c.ctx.Err(); err != nil {
			causes = append(causes, context.Cause(c.ctx))
			break
		}
		log := func(msg string, err error) {
			a.log.Warn(msg, slog.String("chunk", name.String()), slog.String("image", c.image),
				slog.String("tier", ts.t.Name()), slog.Any("err", err))
		}
		start := a.cfg.Now()
		ct, err := ts.t.Fetch(c.ctx, name, buf[:0])
		observe(ts.m.seconds, a.cfg.Now().Sub(start).Seconds())
		if err != nil {
			causes = append(causes, fmt.Errorf("tier %s: %w", ts.t.Name(), err))
			switch {
			case errors.Is(err, chunk.ErrCorrupt):
				inc(ts.m.verify)
				inc(ts.m.miss)
				c.verifyFails++
				log("corrupt chunk in tier", err)
			case errors.Is(err, store.ErrNotFound):
				inc(ts.m.miss)
				if ts.fleet && fleetMissUnreachable(err) {
					a.degrade(c.image, DegradedFleetUnreachable, err)
				}
			default:
				inc(ts.m.err)
				if c.ctx.Err() == nil {
					log("fetching chunk from tier", err)
					if ts.fleet {
						a.degrade(c.image, DegradedFleetUnreachable, err)
					}
				}
			}
			continue
		}
		if cap(ct) > cap(buf) {
			buf = ct // keep the larger buffer for the next tier and the pool
		}
		plain, err := openChunk(c, ct, ts.verified)
		if err == nil && len(plain) != c.size {
			err = &chunk.CorruptError{Name: name, Reason: fmt.Sprintf("plaintext is %d bytes, the manifest says %d", len(plain), c.size)}
		}
		if err != nil {
			causes = append(causes, fmt.Errorf("tier %s: %w", ts.t.Name(), err))
			inc(ts.m.verify)
			inc(ts.m.err)
			c.verifyFails++
			log("chunk from tier failed verification", err)
			continue
		}
		inc(ts.m.hit)
		add(ts.m.bytes, len(ct))
		c.plain, c.tier, c.ctLen = plain, i, len(ct)
		if c.verifyFails > 0 {
			a.degrade(c.image, DegradedVerifyFailure, errors.Join(causes...))
		}
		if ts.origin && a.hasFleet() {
			a.degrade(c.image, DegradedOriginFallback, errors.Join(causes...))
		}
		return ct
	}
	c.err = fmt.Errorf("fetching chunk %s: %w: %w", name, ErrIO, errors.Join(causes...))
	if c.verifyFails > 0 {
		a.degrade(c.image, DegradedVerifyFailure, c.err)
	}
	return buf
}

// fill writes verified ciphertext back to every tier faster than the one
// that served it. Write-backs are best-effort: a failure is logged and
// counted, and when every fill slot is busy the write-back is skipped rather
// than queued (queued fills would pin ciphertext buffers without bound).
func (a *Agent) fill(c *call, ct []byte) {
	select {
	case a.fillSem <- struct{}{}:
	default:
		inc(a.am.fillSkipped)
		return
	}
	defer func() { <-a.fillSem }()
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.FetchTimeout)
	defer cancel()
	for _, ts := range a.tiers[:c.tier] {
		if err := ts.t.Fill(ctx, c.ref.Name, ct); err != nil {
			inc(ts.m.fillErr)
			a.log.Warn("filling chunk into tier", slog.String("chunk", c.ref.Name.String()),
				slog.String("image", c.image), slog.String("tier", ts.t.Name()), slog.Any("err", err))
		}
	}
}
