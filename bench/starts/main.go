// Command starts is the load generator of issue #12 ("many starts at once"):
// W simulated workers, each its own agent with a memory L1, a fleet client
// and a rate- and concurrency-limited origin, behind an admission gate,
// start images that share base layers with Zipf popularity. The fleet is
// real cache nodes on 127.0.0.2.. (`lode cache serve` processes with -lode,
// else in-process servers); the origin is a file store, or any store URL
// (-store: an S3-compatible server; bench/starts.sh ORIGIN=s3 runs versitygw). Latencies are
// injected per tier from the paper's figures (fleet median 550 µs / p99.9
// 3.7 ms, origin 36 ms / 175 ms; log-normal fits, padded onto the real
// call). bench/starts.sh runs every scenario; docs/scale.md has the results.
//
//	go run ./bench/starts -scenario=sweep -workers=1 -rates=20,40,80
//	go run ./bench/starts -scenario=empty-fleet -lode=/tmp/lode -rate=40
//
// Scenarios: sweep (the steady state at each of -rates, one row each),
// steady (one rate, optionally -cpuprofile), empty-fleet (every node
// restarted empty at once), node-restart (one node), origin-errors (fleet
// emptied and 5% of origin requests fail), origin-stall (fleet emptied and
// the origin answers nothing for -stall).
//
// A start is: Admission.Acquire, Agent.Open, the prefetch lode agent starts
// at open (worker.PrefetchAtOpen: the manifest's start set, -max-fetches in
// parallel; -prefetch-at-open=false leaves it out), read the image's start set
// (a fixed ReadFrac of its chunks, mostly base-layer chunks) in -streams
// parallel streams; the product's agent.StartGate then releases the slot once
// the reads have been quiet for 250 ms, and the image is closed. Running
// containers read a random chunk of a random image every -run-every with a
// -read-deadline.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	Scenario string
	Workers  int
	Nodes    int
	Port     int
	Lode     string
	NodeCPUs string // taskset CPU list for node processes ("" = unpinned)
	NodeMiB  int64
	Seed     uint64

	Bases, PerBase, Chunks, ChunkSize int
	BaseFrac, ReadFrac, ReadBase      float64
	ZipfS                             float64
	Streams                           int
	PrefetchAtOpen                    bool

	Rates                     []float64 // starts/s per worker
	Warm, Before, After, Step time.Duration
	Every                     int // seconds per timeline row

	MaxStarts               int
	StartWait, FetchTimeout time.Duration
	Fetches                 int
	L1MiB                   int64
	OriginConc, OriginBurst int
	OriginRate              float64
	FleetConc               int
	OriginAttempts          int
	SecondLook              time.Duration
	Lease                   time.Duration

	FleetMedian, FleetP999, OriginMedian, OriginP999 time.Duration

	Running                int
	RunEvery, ReadDeadline time.Duration

	ErrRate float64
	Stall   time.Duration

	CPUProfile string
	Samples    string
	Store      string
	Work       string
}

func main() {
	var c config
	var rates string
	f := flag.CommandLine
	f.StringVar(&c.Scenario, "scenario", "steady", "sweep | steady | empty-fleet | node-restart | origin-errors | origin-stall")
	f.IntVar(&c.Workers, "workers", 4, "simulated workers (one agent, fleet client and admission gate each)")
	f.IntVar(&c.Nodes, "nodes", 5, "cache nodes on 127.0.0.2..")
	f.IntVar(&c.Port, "port", 7531, "port of every cache node")
	f.StringVar(&c.Lode, "lode", "", "lode binary: run nodes as `lode cache serve` processes (default: in-process nodes)")
	f.StringVar(&c.NodeCPUs, "node-cpus", "", "pin the node processes to these CPUs (a taskset list, e.g. 1); run the generator under taskset -c 0 so that it measures the worker alone")
	f.Int64Var(&c.NodeMiB, "node-mem", 0, "memory per node, MiB (0: room for twice the stored shards)")
	f.Uint64Var(&c.Seed, "seed", 1, "random seed")
	f.IntVar(&c.Bases, "bases", 4, "base layers")
	f.IntVar(&c.PerBase, "images-per-base", 25, "images on each base")
	f.IntVar(&c.Chunks, "chunks", 256, "chunks per image")
	f.IntVar(&c.ChunkSize, "chunk-size", 512<<10, "chunk size in bytes")
	f.Float64Var(&c.BaseFrac, "base-frac", 0.75, "share of an image's chunks in its base layer")
	f.Float64Var(&c.ReadFrac, "read-frac", 0.064, "share of an image's chunks a start reads (the paper's sparsity)")
	f.Float64Var(&c.ReadBase, "read-base", 0.8, "share of a start's chunks in the base layer")
	f.Float64Var(&c.ZipfS, "zipf", 1.1, "Zipf exponent of image popularity and of chunk popularity in a base")
	f.IntVar(&c.Streams, "streams", 4, "parallel read streams in one start")
	f.BoolVar(&c.PrefetchAtOpen, "prefetch-at-open", true, "prefetch the start set (manifest.Hints) at open, as lode agent does (worker.PrefetchAtOpen, -max-fetches in parallel)")
	f.StringVar(&rates, "rates", "10,20,40,60", "sweep: starts/s per worker, one step each")
	rate := f.Float64("rate", 20, "starts/s per worker (not sweep)")
	f.DurationVar(&c.Warm, "warm", 8*time.Second, "warm-up at the first rate, not measured")
	f.DurationVar(&c.Before, "before", 10*time.Second, "measured steady state before the event")
	f.DurationVar(&c.After, "after", 30*time.Second, "run after the event")
	f.DurationVar(&c.Step, "step", 8*time.Second, "sweep: length of each step (its first 2 s are not measured)")
	f.IntVar(&c.Every, "every", 2, "seconds per timeline row")
	f.IntVar(&c.MaxStarts, "max-starts", 16, "admission: starts in flight per worker (lode agent --max-starts)")
	f.DurationVar(&c.StartWait, "start-wait", 2*time.Second, "admission: wait for a slot before refusing (lode agent --start-wait)")
	f.DurationVar(&c.FetchTimeout, "fetch-timeout", 5*time.Second, "agent: deadline of one chunk fetch across tiers")
	f.IntVar(&c.Fetches, "max-fetches", 32, "agent: tier fetches in flight per worker")
	f.Int64Var(&c.L1MiB, "l1-mem", 96, "worker memory cache, MiB")
	f.IntVar(&c.OriginConc, "origin-concurrency", 32, "origin requests in flight per worker")
	f.Float64Var(&c.OriginRate, "origin-rate", 50, "origin requests/s per worker (token bucket; 0: unlimited)")
	f.IntVar(&c.OriginBurst, "origin-burst", 10, "origin token bucket burst")
	f.IntVar(&c.OriginAttempts, "origin-attempts", 1, "tries per origin fetch on a transient error (lode's --origin-attempts; 1: no retry, so injected origin faults are counted, not retried away)")
	f.IntVar(&c.FleetConc, "fleet-concurrency", 0, "fleet reads in flight per worker (0: unbounded)")
	f.DurationVar(&c.Lease, "lease", 250*time.Millisecond, "origin leases from the fleet, as lode's --origin-lease: on a fleet miss take the chunk's lease before the origin, or wait up to this for the holder's fill (0: off)")
	f.DurationVar(&c.SecondLook, "second-look", 0, "mitigation: on a fleet miss wait up to this (uniform jitter) and ask the fleet again before the origin (0: off)")
	f.DurationVar(&c.FleetMedian, "fleet-median", 550*time.Microsecond, "fleet latency median")
	f.DurationVar(&c.FleetP999, "fleet-p999", 3700*time.Microsecond, "fleet latency p99.9")
	f.DurationVar(&c.OriginMedian, "origin-median", 36*time.Millisecond, "origin latency median")
	f.DurationVar(&c.OriginP999, "origin-p999", 175*time.Millisecond, "origin latency p99.9")
	f.IntVar(&c.Running, "running", 2, "running containers reading per worker")
	f.DurationVar(&c.RunEvery, "run-every", 100*time.Millisecond, "pause between a running container's reads")
	f.DurationVar(&c.ReadDeadline, "read-deadline", 2*time.Second, "deadline of a running container's read")
	f.Float64Var(&c.ErrRate, "error-rate", 0.05, "origin-errors: share of origin requests that fail")
	f.DurationVar(&c.Stall, "stall", 10*time.Second, "origin-stall: how long the origin answers nothing")
	f.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the measured part here")
	f.StringVar(&c.Samples, "samples", "", "write every successful start (completed at, latency, chunks from memory / fleet / origin) to this CSV file, and the scheduling probe's wake-ups (at, ms late) to FILE without .csv + .probes.csv, each fleet fetch (at, real and injected ms) to .fleet.csv")
	f.StringVar(&c.Store, "store", "", "origin store URL: file:///DIR or s3://BUCKET/PREFIX?endpoint=… (credentials from AWS_*; docs/s3.md); default a file store in the work directory")
	f.StringVar(&c.Work, "work", "", "work directory (default a temporary one, removed)")
	flag.Parse()

	var err error
	if c.Rates, err = floats(rates); err != nil {
		fail(err)
	}
	if c.Scenario != "sweep" {
		c.Rates = []float64{*rate}
	}
	if c.NodeCPUs != "" && c.Lode == "" {
		fail(fmt.Errorf("-node-cpus pins node processes: give -lode too"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "starts bench:", err)
	os.Exit(1)
}

func floats(s string) ([]float64, error) {
	var out []float64
	for _, p := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return nil, fmt.Errorf("parsing rate %q: %w", p, err)
		}
		out = append(out, v)
	}
	return out, nil
}

func run(ctx context.Context, c config) error {
	switch c.Scenario {
	case "sweep", "steady", "empty-fleet", "node-restart", "origin-errors", "origin-stall":
	default:
		return fmt.Errorf("unknown -scenario %q", c.Scenario)
	}
	work := c.Work
	if work == "" {
		d, err := os.MkdirTemp("", "lode-starts-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		work = d
	}
	r, err := setup(ctx, c, work)
	if err != nil {
		return err
	}
	defer r.close()
	if c.Samples != "" {
		defer func() {
			if err := r.tl.writeSamples(c.Samples); err != nil {
				fmt.Fprintln(os.Stderr, "starts bench:", err)
			}
		}()
	}
	fmt.Printf("config: %d workers, rate %v starts/s per worker, admission %d starts / %v, agent %d fetches / %v, L1 %d MiB, origin ≤ %d in flight and %.0f/s (burst %d) per worker (%d attempts), second look %v, origin lease %v, %d running readers per worker (deadline %v)\n",
		c.Workers, c.Rates, c.MaxStarts, c.StartWait, c.Fetches, c.FetchTimeout, c.L1MiB, c.OriginConc, c.OriginRate, c.OriginBurst, c.OriginAttempts, c.SecondLook, c.Lease, c.Running, c.ReadDeadline)
	if c.Scenario == "sweep" {
		return r.sweep(ctx)
	}
	return r.scenario(ctx)
}

func (r *runner) sweep(ctx context.Context) error {
	c := r.c
	r.setRate(c.Rates[0])
	r.tl.t0 = time.Now()
	r.run(ctx)
	defer r.halt(c.FetchTimeout + 5*time.Second)
	go r.tl.runProbe(&r.stop)
	time.Sleep(c.Warm)
	fmt.Println()
	fmt.Println("| offered starts/s per worker | starts/s | rejected | failed | p50 / p99 / p99.9 ms, all starts | p99/p50, all | L1-only starts: n, p50 / p99 ms, p99/p50 | loading starts (fleet or origin): n, p50 / p99 ms, p99/p50 | steady | fleet req/s | origin req/s | hits mem / fleet / origin % | worker CPU: % of a core, ms per start | worker GC: cycles, CPU ms, pause ms | nodes' CPU: % of a core | fleet: shard GETs not sent (node busy), chunk misses | waiting for a CPU, ms/s: worker / nodes | probe: 10 ms sleep late p50 / p99 ms |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	sustained, broken := 0.0, false
	for _, rate := range c.Rates {
		r.setRate(rate)
		from := r.tl.since() + 2*time.Second
		time.Sleep(2 * time.Second)
		busy0, miss0 := r.counter("lode_fleet_shard_requests_total", "result", "busy"), r.counter("lode_fleet_fetches_total", "result", "miss")
		wd0, nd0 := runDelay(0), r.fl.runDelay()
		cpu0, node0, gc0, t0 := cpuTime(), r.fl.cpuTime(), readGC(), time.Now()
		time.Sleep(c.Step - 2*time.Second)
		cpu, node, gc, wall := cpuTime()-cpu0, r.fl.cpuTime()-node0, readGC().sub(gc0), time.Since(t0)
		wd, nd := runDelay(0)-wd0, r.fl.runDelay()-nd0
		busy, miss := r.counter("lode_fleet_shard_requests_total", "result", "busy")-busy0, r.counter("lode_fleet_fetches_total", "result", "miss")-miss0
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w := r.tl.window(from, r.tl.since())
		late50, late99 := r.tl.probeLate(from, r.tl.since())
		verdict, ok := steadyVerdict(w)
		switch {
		case ok && !broken:
			sustained = rate
		case !ok && !strings.HasPrefix(verdict, "unknown"):
			broken = true // an unknown step (too few loading starts) neither counts nor ends the run
		}
		perStart := 0.0
		if w.starts > 0 {
			perStart = float64(cpu.Microseconds()) / 1000 / float64(w.starts)
		}
		fmt.Printf("| %.0f | %.1f | %d | %d | %s / %s / %s | %.2f | %s | %s | %s | %.0f | %.1f | %.1f / %.1f / %.2f | %.0f%%, %.2f | %d, %.0f, %.1f | %.0f%% | %.0f, %.0f | %.0f / %.0f | %s / %s |\n",
			rate, w.rate(w.starts), w.rejected, w.failed, ms(w.p50), ms(w.p99), ms(w.p999), ratio(w.p99, w.p50),
			fmtClass(w.warm), fmtClass(w.cold), verdict,
			w.rate(w.requests[tierFleet]), w.rate(w.requests[tierOrigin]), w.share(w.mem), w.share(w.fleet), w.share(w.origin),
			100*cpu.Seconds()/wall.Seconds(), perStart, gc.cycles, float64(gc.cpu)/1e6, float64(gc.pause)/1e6,
			100*node.Seconds()/wall.Seconds(), busy, miss, float64(wd.Milliseconds())/wall.Seconds(), float64(nd.Milliseconds())/wall.Seconds(), ms(late50), ms(late99))
	}
	fmt.Printf("\nsustained: %.0f starts/s per worker (the highest offered rate up to which every step is steady: no refusal or failure; "+
		"starts that loaded chunks, p99 ≤ 2× p50 (≥ %d of them); starts from L1 alone, p99 ≤ that p50)\n", sustained, minClass)
	r.footer()
	return nil
}

// cpuTime is the CPU time (user + system) this process has used: the
// worker's (the generator's) own cost, whatever else the host runs.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// gcStats is the generator's garbage collection so far: cycles, the CPU
// the collector used (runtime/metrics /cpu/classes/gc/total, an estimate
// that includes mark assists) and stop-the-world pause time.
type gcStats struct {
	cycles     int64
	cpu, pause time.Duration
}

func readGC() gcStats {
	ms := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(ms)
	var s gcStats
	if ms[0].Value.Kind() == metrics.KindFloat64 {
		s.cpu = time.Duration(ms[0].Value.Float64() * 1e9)
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	s.cycles, s.pause = int64(m.NumGC), time.Duration(m.PauseTotalNs)
	return s
}

func (s gcStats) sub(o gcStats) gcStats {
	return gcStats{cycles: s.cycles - o.cycles, cpu: s.cpu - o.cpu, pause: s.pause - o.pause}
}

func (r *runner) scenario(ctx context.Context) error {
	c := r.c
	r.setRate(c.Rates[0])
	r.tl.t0 = time.Now()
	r.run(ctx)
	time.Sleep(c.Warm)
	// Idle baseline: no start in flight, caches warm.
	r.setRate(0)
	r.pause.Store(true)
	r.waitQuiet(c.FetchTimeout + 5*time.Second)
	g0, h0, l0 := r.idleState()
	r.pause.Store(false)
	stopProf, err := startProfile(c.CPUProfile)
	if err != nil {
		return err
	}
	r.setRate(c.Rates[0])
	before := r.tl.since()
	time.Sleep(c.Before)
	event := r.tl.since()
	var what string
	switch c.Scenario {
	case "steady":
		what = "none (steady state, warm fleet)"
	case "empty-fleet":
		what = "every node restarted empty at once"
	case "node-restart":
		what = "node 0 restarted empty"
	case "origin-errors":
		what = fmt.Sprintf("every node restarted empty, then %.0f%% of origin requests fail", 100*c.ErrRate)
	case "origin-stall":
		what = fmt.Sprintf("every node restarted empty, then the origin answers nothing for %v", c.Stall)
	}
	r.track.start()
	t0 := time.Now()
	switch c.Scenario {
	case "empty-fleet", "origin-errors", "origin-stall":
		all := make([]int, c.Nodes)
		for i := range all {
			all[i] = i
		}
		err = r.fl.restart(ctx, all...)
	case "node-restart":
		err = r.fl.restart(ctx, 0)
	}
	if err != nil {
		return err
	}
	restartTook := time.Since(t0)
	switch c.Scenario {
	case "origin-errors":
		r.fault.setErrorRate(c.ErrRate)
	case "origin-stall":
		r.fault.stall(c.Stall)
	}
	time.Sleep(c.After)
	end := r.tl.since()
	stopProf()
	hist, dupTotal := r.track.histogram()
	r.fault.setErrorRate(0)
	hung := r.halt(c.FetchTimeout + 5*time.Second)
	stopped := r.tl.since()
	g1, h1, l1 := r.idleState()

	fmt.Printf("\n### %s: %s\n\n", c.Scenario, what)
	fmt.Printf("event at t=%.0f s (node restarts took %v)\n\n", event.Seconds(), restartTook.Round(time.Millisecond))
	fmt.Println("| window | starts/s | rejected (admission) | failed (other) | p50 ms | p99 ms | p99.9 ms | fleet req/s | origin req/s | max origin req/s: all / one worker | hits mem / fleet / origin % | running reads ok / failed, max ms |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	row := func(name string, w window) {
		fmt.Printf("| %s | %.1f | %d | %d | %s | %s | %s | %.0f | %.1f | %d / %d | %.1f / %.1f / %.2f | %d / %d, %s |\n",
			name, w.rate(w.starts), w.rejected, w.failed, ms(w.p50), ms(w.p99), ms(w.p999), w.rate(w.requests[tierFleet]),
			w.rate(w.requests[tierOrigin]), w.maxOriginSec, w.maxOriginWkr, w.share(w.mem), w.share(w.fleet), w.share(w.origin),
			w.runOK, w.runFailed, ms(w.runMax))
	}
	ref := r.tl.window(before, event)
	row(fmt.Sprintf("before (%.0f s)", ref.secs), ref)
	if c.Scenario != "steady" {
		row("after, first 10 s", r.tl.window(event, event+10*time.Second))
		row(fmt.Sprintf("after, all %.0f s", (end-event).Seconds()), r.tl.window(event, end))
		row("after, last 10 s", r.tl.window(end-10*time.Second, end))
	}

	if c.Scenario != "steady" {
		fmt.Println()
		fmt.Println("| t s | starts | p50 / p99 ms | rejected | failed | fleet req | fleet hits | origin req | origin max/worker | running failed | running max ms |")
		fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
		from := int(event/time.Second) - 2*c.Every
		for s := max(0, from); s+c.Every <= int(end/time.Second); s += c.Every {
			w := r.tl.window(time.Duration(s)*time.Second, time.Duration(s+c.Every)*time.Second)
			fmt.Printf("| %d | %d | %s / %s | %d | %d | %d | %d | %d | %d | %d | %s |\n", s-int(event/time.Second), w.starts, ms(w.p50), ms(w.p99), w.rejected, w.failed,
				w.requests[tierFleet], w.hits[tierFleet], w.requests[tierOrigin], w.maxOriginWkr, w.runFailed, ms(w.runMax))
		}
		fmt.Println("(t relative to the event; counts per row)")
		fmt.Println()
		refRate := ref.rate(ref.starts)
		low, at, rec, ok := r.recovery(event, end, refRate)
		switch {
		case low >= 0.9*refRate:
			fmt.Printf("recovery: the start rate (3 s moving average) never fell below 90%% of the steady %.1f/s (lowest %.1f/s, %.0f%%, %.0f s after the event)\n", refRate, low, 100*low/refRate, at.Seconds())
		case ok:
			fmt.Printf("recovery: the start rate (3 s moving average) fell to %.1f/s (%.0f%% of the steady %.1f/s) %.0f s after the event and was back at ≥ 90%% %.0f s after the event\n", low, 100*low/refRate, refRate, at.Seconds(), rec.Seconds())
		default:
			fmt.Printf("recovery: the start rate fell to %.1f/s (%.0f%% of the steady %.1f/s) %.0f s after the event and was not back at 90%% within the run\n", low, 100*low/refRate, refRate, at.Seconds())
		}
		limit := c.OriginRate + float64(c.OriginBurst)
		aw := r.tl.window(event, end)
		fmt.Printf("origin limit: at most %d requests in any second from one worker (limit %.0f/s + burst %d = %.0f), %d from all %d workers (limit %.0f)\n",
			aw.maxOriginWkr, c.OriginRate, c.OriginBurst, limit, aw.maxOriginSec, c.Workers, limit*float64(c.Workers))
		fmt.Printf("origin requests per chunk after the event (all workers): %d requests for %d chunks; chunks by requests %s; max %d (bound: %d workers)\n",
			dupTotal, countChunks(hist), fmtHist(hist), len(hist)-1, c.Workers)
		if c.SecondLook > 0 {
			fmt.Printf("second look: %d origin requests avoided by a fleet hit after the jitter\n", r.saved.Load())
		}
		if ls, ok := r.leaseStats(); ok {
			fmt.Printf("origin leases (whole run, all workers): %d origin reads under a lease; %d misses found it held and waited: %d served by the holder's fill, %d read the origin after %v\n",
				ls.Granted, ls.Waited, ls.Filled, ls.Fallback, c.Lease)
		}
	}
	fmt.Println()
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range r.firstErrs {
			if !yield(k) {
				return
			}
		}
	}) {
		fmt.Printf("first %s error: %v\n", k, r.firstErrs[k])
	}
	fmt.Printf("admission: lode_agent_starts_rejected_total = %.0f over all workers\n", r.rejectedMetric())
	fmt.Printf("after the run: %d starts still in flight %v after stopping (hung); idle, after closing idle fleet connections: goroutines %d before → %d after; heap in use %.1f → %.1f MiB, of which memory caches %.1f → %.1f MiB (heap outside them %+.1f MiB)\n",
		hung, (stopped - end).Round(100*time.Millisecond), g0, g1, mib(h0), mib(h1), mib(l0), mib(l1), mib((h1-l1)-(h0-l0)))
	r.footer()
	return nil
}

// recovery finds the lowest 3-second moving average of completed starts
// after the event (low, at), and when after it the average is first back at
// 90% of ref (rec).
func (r *runner) recovery(event, end time.Duration, ref float64) (low float64, at, rec time.Duration, ok bool) {
	e, last := int(event/time.Second), int(end/time.Second)-3
	avg := func(s int) float64 {
		w := r.tl.window(time.Duration(s)*time.Second, time.Duration(s+3)*time.Second)
		return w.rate(w.starts)
	}
	lowAt := e
	low = math.Inf(1)
	for s := e; s <= last; s++ {
		if a := avg(s); a < low {
			low, lowAt = a, s
		}
	}
	for s := lowAt; s <= last; s++ {
		if avg(s) >= 0.9*ref {
			return low, time.Duration(lowAt-e) * time.Second, time.Duration(s-e) * time.Second, true
		}
	}
	return low, time.Duration(lowAt-e) * time.Second, 0, false
}

func (r *runner) footer() {
	var nodes []string
	for _, h := range r.fl.peakRSS() {
		if h > 0 {
			nodes = append(nodes, strconv.FormatInt(h>>20, 10))
		}
	}
	s := fmt.Sprintf("peak RSS (VmHWM): generator (all %d workers) %d MiB", r.c.Workers, vmHWM(0)>>20)
	if len(nodes) > 0 {
		s += fmt.Sprintf("; nodes %s MiB", strings.Join(nodes, ", "))
	}
	fmt.Println(s)
}

func countChunks(h []int) int {
	n := 0
	for _, v := range h {
		n += v
	}
	return n
}

func fmtHist(h []int) string {
	var parts []string
	for k, v := range h {
		if k > 0 && v > 0 {
			parts = append(parts, fmt.Sprintf("%d×%d", v, k))
		}
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, ", ") + " (chunks×requests)"
}

// steadyVerdict judges one sweep step by the criterion of
// docs/decisions/20261123-start-latency-classes.md: steady when no start was
// refused or failed, the starts that loaded chunks (fleet or origin) have
// p99 ≤ 2× their p50, and the starts served by L1 alone stayed faster (p99)
// than the median loading start.
func steadyVerdict(w window) (string, bool) {
	if w.rejected+w.failed > 0 {
		return "no (refused or failed starts)", false
	}
	ok, known := w.cold.steady()
	switch {
	case !known:
		return fmt.Sprintf("unknown (%d loading starts, need %d)", w.cold.n, minClass), false
	case !ok:
		return "no (loading p99 > 2× p50)", false
	case w.warm.n > 0 && w.warm.p99 > w.cold.p50:
		return "no (L1-only p99 > loading p50)", false
	}
	return "yes", true
}

func fmtClass(c class) string {
	if c.n == 0 {
		return "0"
	}
	return fmt.Sprintf("%d, %s / %s, %.2f", c.n, ms(c.p50), ms(c.p99), ratio(c.p99, c.p50))
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
