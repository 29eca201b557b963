package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/file"
	"github.com/lode-dev/lode/internal/store/storeurl"
	lodeworker "github.com/lode-dev/lode/internal/worker"
)

// worker is one simulated worker: its own agent (memory L1, fleet client,
// rate-limited origin) and admission gate, as one `lode agent` would have.
type worker struct {
	id      int
	a       *agent.Agent
	adm     *agent.Admission
	reg     *prometheus.Registry
	client  *cachefleet.Client
	mem     *agent.MemCache
	origin  agent.Tier     // the origin as the agent reads it (limits, leases)
	running []*agent.Image // one per image: the running containers' view
}

type runner struct {
	c      config
	ims    *images
	fl     *fleet
	tl     *timeline
	fault  *faulty
	track  *chunkCounts
	saved  atomic.Int64
	wks    []*worker
	rank   []int // popularity rank -> image
	bufs   sync.Pool
	rate   atomic.Uint64 // starts/s per worker, float64 bits
	stop   atomic.Bool   // generators and running readers end
	pause  atomic.Bool   // running readers wait (the idle baseline)
	active atomic.Int64  // starts in flight (from arrival to done)
	wg     sync.WaitGroup

	errMu     sync.Mutex
	firstErrs map[string]error // first error of each kind
}

func (r *runner) setRate(perWorker float64) { r.rate.Store(math.Float64bits(perWorker)) }

func setup(ctx context.Context, c config, work string) (*runner, error) {
	t0 := time.Now()
	var st store.Store
	var err error
	if c.Store == "" {
		st, err = file.New(filepath.Join(work, "origin"))
	} else {
		st, err = storeurl.Open(ctx, c.Store, nil)
	}
	if err != nil {
		return nil, err
	}
	ims, err := buildImages(ctx, c, st)
	if err != nil {
		return nil, fmt.Errorf("building images: %w", err)
	}
	nodeMem := c.NodeMiB << 20
	if nodeMem == 0 { // twice the shards of everything stored, spread over the nodes
		nodeMem = 2*ims.bytes*5/4/int64(c.Nodes) + 16<<20
	}
	fl, err := startFleet(ctx, c.Nodes, c.Port, nodeMem, c.Lode, c.NodeCPUs, work)
	if err != nil {
		return nil, err
	}
	r := &runner{c: c, ims: ims, fl: fl, tl: newTimeline(900, c.Workers), fault: &faulty{}, track: &chunkCounts{},
		firstErrs: map[string]error{}}
	r.fault.Tier = &delayed{Tier: agent.NewOrigin(st, benchRoot), lat: fitLatency(c.OriginMedian, c.OriginP999)}
	r.rank = rand.New(rand.NewPCG(c.Seed, 7)).Perm(len(ims.manifests))
	for w := range c.Workers {
		wk, err := r.newWorker(w)
		if err != nil {
			r.close()
			return nil, err
		}
		r.wks = append(r.wks, wk)
	}
	if err := r.prefill(ctx, st); err != nil {
		r.close()
		return nil, err
	}
	fmt.Printf("setup: %d images (%d bases × %d) of %d chunks of %d KiB; start set %d chunks (%.1f%%); %d distinct chunks stored (%d MiB) in the origin %s; %d fleet nodes (%s) × %d MiB; %.1f s\n",
		len(ims.manifests), c.Bases, c.PerBase, c.Chunks, c.ChunkSize>>10, len(ims.sets[0]),
		100*float64(len(ims.sets[0]))/float64(c.Chunks), ims.stored, ims.bytes>>20, st, c.Nodes, nodeKind(c.Lode), nodeMem>>20, time.Since(t0).Seconds())
	return r, nil
}

func nodeKind(lode string) string {
	if lode != "" {
		return "`lode cache serve` processes"
	}
	return "in-process"
}

func (r *runner) newWorker(w int) (*worker, error) {
	c := r.c
	opts := lodeworker.Options{
		MemBytes: c.L1MiB << 20, FetchTimeout: c.FetchTimeout, Fetches: c.Fetches, Fleet: r.fl.urls(),
		FleetConcurrency: c.FleetConc, OriginConcurrency: c.OriginConc, OriginAttempts: c.OriginAttempts,
		OriginRate: c.OriginRate, OriginBurst: c.OriginBurst, OriginLease: c.Lease,
	}
	reg := prometheus.NewRegistry()
	client, err := opts.FleetClient(reg, nil) // the client lode agent builds, wrapped below
	if err != nil {
		return nil, err
	}
	// The stack every worker builds (worker.NewStack, the order of the
	// origin's limits in worker.Options.ProtectOrigin), over a counted,
	// delayed fleet client and a counted, faulty, delayed origin. The
	// second look, if on, sits between the limits and the leases.
	var wrap func(agent.Tier) agent.Tier
	if c.SecondLook > 0 {
		wrap = func(t agent.Tier) agent.Tier {
			return &secondLook{Tier: t, fleet: client, jitter: c.SecondLook, saved: &r.saved}
		}
	}
	stack, err := lodeworker.NewStack(context.Background(), opts, &counted{Tier: r.fault, tl: r.tl, kind: tierOrigin, worker: w, track: r.track}, reg, nil, lodeworker.Parts{
		Fleet:      &counted{Tier: &delayed{Tier: client, lat: fitLatency(c.FleetMedian, c.FleetP999), tl: r.tl}, tl: r.tl, kind: tierFleet, worker: w},
		WrapOrigin: wrap,
	})
	if err != nil {
		client.Close()
		return nil, err
	}
	a, mem, originTier, m := stack.Agent, stack.Mem, stack.Origin, stack.Metrics
	wk := &worker{id: w, a: a, adm: agent.NewAdmission(c.MaxStarts, c.StartWait, m), reg: reg, client: client, mem: mem, origin: originTier}
	for i, mf := range r.ims.manifests {
		im, err := a.Open(fmt.Sprintf("w%d/running/img%d", w, i), mf)
		if err != nil {
			return nil, err
		}
		wk.running = append(wk.running, im)
	}
	return wk, nil
}

// prefill puts every stored chunk into the fleet: a warm fleet.
func (r *runner) prefill(ctx context.Context, st store.Store) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	cl := r.wks[0].client
	for _, n := range r.ims.names {
		g.Go(func() error {
			ct, err := st.Get(gctx, store.ChunkKey(benchRoot, n), nil)
			if err != nil {
				return err
			}
			return cl.Fill(gctx, n, ct)
		})
	}
	return g.Wait()
}

func (r *runner) close() {
	for _, w := range r.wks {
		for _, im := range w.running {
			im.Close()
		}
		w.a.Close()
		w.client.Close()
	}
	r.fl.close()
}

func (r *runner) noteErr(kind string, err error) {
	r.errMu.Lock()
	if r.firstErrs[kind] == nil {
		r.firstErrs[kind] = err
	}
	r.errMu.Unlock()
}

// run starts the generators and running readers; they go on until halt.
func (r *runner) run(ctx context.Context) {
	for _, w := range r.wks {
		r.wg.Add(1)
		go r.generate(ctx, w)
		for k := range r.c.Running {
			r.wg.Add(1)
			go r.runReads(ctx, w, k)
		}
	}
}

// halt stops new starts and running reads and waits up to limit for
// everything in flight; it returns the starts still in flight after it
// (hung).
func (r *runner) halt(limit time.Duration) int64 {
	r.stop.Store(true)
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
	}
	return r.active.Load()
}

// generate offers starts to w at the current rate as a Poisson process
// (open loop: a slow worker does not slow the arrivals), images drawn with
// Zipf popularity.
func (r *runner) generate(ctx context.Context, w *worker) {
	defer r.wg.Done()
	rng := rand.New(rand.NewPCG(r.c.Seed, uint64(100+w.id)))
	z := rand.NewZipf(rng, r.c.ZipfS, 1, uint64(len(r.rank)-1))
	next := time.Now()
	for !r.stop.Load() && ctx.Err() == nil {
		rate := math.Float64frombits(r.rate.Load())
		if rate <= 0 {
			time.Sleep(10 * time.Millisecond)
			next = time.Now()
			continue
		}
		next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		} else if d < -time.Second {
			next = time.Now() // the generator itself fell behind; do not burst to catch up
		}
		img := r.rank[z.Uint64()]
		r.active.Add(1)
		r.wg.Add(1)
		go r.start(ctx, w, img, time.Now())
	}
}

// start is one container start: admission, open, the product's prefetch of
// the start set at open (worker.PrefetchAtOpen, unless -prefetch-at-open=false),
// read the start set in Streams parallel streams; the slot is released by the product's start gate
// (agent.StartGate) once the reads have been quiet for 250 ms, then the
// image closes.
func (r *runner) start(ctx context.Context, w *worker, img int, arrived time.Time) {
	defer r.wg.Done()
	defer r.active.Add(-1)
	name := fmt.Sprintf("w%d/img%d", w.id, img)
	release, err := w.adm.Acquire(ctx, name)
	if err != nil {
		if errors.Is(err, agent.ErrTooManyStarts) {
			r.tl.now().rejected.Add(1)
			r.noteErr("admission", err)
		}
		return
	}
	im, err := w.a.Open(name, r.ims.manifests[img])
	if err != nil {
		release()
		r.tl.now().failed.Add(1)
		r.noteErr("open", err)
		return
	}
	// The product's start gate (lode agent's mounts and exports): the slot
	// is held through the start's first reads, until they have been quiet
	// for 250 ms (at most lode agent's default --start-window), while the
	// container keeps its image open; then the image closes.
	gated := make(chan struct{})
	agent.StartGate{}.Hold(func() { release(); close(gated) }, im, nil)
	defer func() {
		<-gated
		im.Close()
	}()
	im.SetStarting(true) // as lode agent marks a new mount (--start-window)
	if r.c.PrefetchAtOpen {
		// What lode agent does when it opens an image: prefetch the start
		// set (manifest.Hints) in parallel, in the background. The origin
		// is modelled as remote (injected latency), so no local-disk yield.
		lodeworker.PrefetchAtOpen(ctx, im, r.ims.manifests[img].Hints, false, r.c.Fetches)
	}
	set := r.ims.sets[img]
	cs := int64(r.c.ChunkSize)
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range min(r.c.Streams, len(set)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bp := r.buf()
			defer r.bufs.Put(bp)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(set) || failed.Load() != nil {
					return
				}
				if _, err := im.ReadAt(ctx, *bp, int64(set[i])*cs); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if e := failed.Load(); e != nil {
		r.tl.now().failed.Add(1)
		r.noteErr("read", *e)
		return
	}
	st := im.Stats()
	r.tl.started(sample{at: r.tl.since(), lat: time.Since(arrived), mem: int32(st.MemHits),
		fleet: int32(st.Tiers[0].Hits), origin: int32(st.Tiers[1].Hits)})
}

func (r *runner) buf() *[]byte {
	if bp, ok := r.bufs.Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, r.c.ChunkSize)
	return &b
}

// runReads is one running container's reads: a chunk of a random image
// every RunEvery, each with a deadline of ReadDeadline.
func (r *runner) runReads(ctx context.Context, w *worker, k int) {
	defer r.wg.Done()
	rng := rand.New(rand.NewPCG(r.c.Seed, uint64(1000+w.id*100+k)))
	bp := r.buf()
	defer r.bufs.Put(bp)
	for !r.stop.Load() && ctx.Err() == nil {
		time.Sleep(r.c.RunEvery)
		if r.pause.Load() {
			continue
		}
		img := rng.IntN(len(w.running))
		set := r.ims.sets[img]
		off := int64(set[rng.IntN(len(set))]) * int64(r.c.ChunkSize)
		rctx, cancel := context.WithTimeout(ctx, r.c.ReadDeadline)
		t0 := time.Now()
		_, err := w.running[img].ReadAt(rctx, *bp, off)
		cancel()
		r.tl.runRead(time.Since(t0), err == nil)
		if err != nil {
			r.noteErr("running read", err)
		}
	}
}

// idleState waits for quiet, closes idle fleet connections and returns the
// goroutine count (not counting the generators and running readers, which
// exist only while the run goes on), the heap in use after a GC and the
// bytes held by the workers' memory caches.
func (r *runner) idleState() (goroutines int, heap, l1 int64) {
	time.Sleep(time.Second)
	harness := 0
	if !r.stop.Load() {
		harness = r.c.Workers * (1 + r.c.Running)
	}
	for _, w := range r.wks {
		w.client.CloseIdleConnections()
		l1 += w.mem.Bytes()
	}
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine() - harness, int64(ms.HeapInuse), l1
}

// waitQuiet waits up to limit for no start to be in flight.
func (r *runner) waitQuiet(limit time.Duration) {
	for deadline := time.Now().Add(limit); r.active.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}

// counter sums, over all workers, the counter name's series whose label
// label has value value ("" label: all series).
func (r *runner) counter(name, label, value string) float64 {
	var sum float64
	for _, w := range r.wks {
		mfs, _ := w.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				ok := label == ""
				for _, lp := range m.GetLabel() {
					ok = ok || lp.GetName() == label && lp.GetValue() == value
				}
				if ok {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func (r *runner) rejectedMetric() float64 {
	var sum float64
	for _, w := range r.wks {
		mfs, _ := w.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "lode_agent_starts_rejected_total" {
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// leaseStats sums the workers' origin lease counts.
func (r *runner) leaseStats() (agent.LeaseStats, bool) {
	var sum agent.LeaseStats
	for _, w := range r.wks {
		s, ok := agent.CoordinateStats(w.origin)
		if !ok {
			return sum, false
		}
		sum.Granted += s.Granted
		sum.Waited += s.Waited
		sum.Filled += s.Filled
		sum.Fallback += s.Fallback
	}
	return sum, true
}
