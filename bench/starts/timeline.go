package main

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	tierFleet = iota
	tierOrigin
	nTiers
)

// bucket is one second of the run.
type bucket struct {
	startsOK, rejected, failed atomic.Int64
	requests, hits             [nTiers]atomic.Int64
	originByWorker             []atomic.Int64
	runOK, runFailed           atomic.Int64
	runMaxNS                   atomic.Int64
}

// timeline records per-second counts and every start's latency.
type timeline struct {
	t0      time.Time
	buckets []bucket

	mu   sync.Mutex
	lats []sample // successful starts

	probeMu sync.Mutex
	probes  []probe     // the scheduling probe's wake-ups
	fetches []fetchTime // fleet fetches, under probeMu
}

// fetchTime is one fleet Fetch: when it returned (since t0), how long the
// real call took (the fleet client: nodes, network, rebuild, verify) and the
// latency drawn for it (the call is padded to the larger).
type fetchTime struct{ at, real, drawn time.Duration }

func (tl *timeline) fetched(f fetchTime) {
	tl.probeMu.Lock()
	tl.fetches = append(tl.fetches, f)
	tl.probeMu.Unlock()
}

// probe is one wake-up of the scheduling probe: at (since t0), how much
// later than asked a 10 ms sleep returned.
type probe struct{ at, late time.Duration }

// runProbe sleeps 10 ms at a time until stop and records how late each
// sleep ends: the delay a goroutine that becomes runnable has before it
// runs (the host's CPU contention, the Go scheduler, timers), without I/O
// or work of its own.
func (tl *timeline) runProbe(stop *atomic.Bool) {
	const d = 10 * time.Millisecond
	for !stop.Load() {
		t0 := time.Now()
		time.Sleep(d)
		late := time.Since(t0) - d
		tl.probeMu.Lock()
		tl.probes = append(tl.probes, probe{at: tl.since(), late: late})
		tl.probeMu.Unlock()
	}
}

// probeLate returns the p50 and p99 lateness of probe wake-ups in [from, to).
func (tl *timeline) probeLate(from, to time.Duration) (p50, p99 time.Duration) {
	var ds []time.Duration
	tl.probeMu.Lock()
	for _, p := range tl.probes {
		if p.at >= from && p.at < to {
			ds = append(ds, p.late)
		}
	}
	tl.probeMu.Unlock()
	return quantile(ds, 0.5), quantile(ds, 0.99)
}

type sample struct {
	at  time.Duration // completion, since t0
	lat time.Duration
	// chunk reads of the start served by the memory cache, fleet, origin
	mem, fleet, origin int32
}

func newTimeline(seconds, workers int) *timeline {
	tl := &timeline{t0: time.Now(), buckets: make([]bucket, seconds)}
	for i := range tl.buckets {
		tl.buckets[i].originByWorker = make([]atomic.Int64, workers)
	}
	return tl
}

func (tl *timeline) now() *bucket {
	i := int(time.Since(tl.t0) / time.Second)
	return &tl.buckets[min(max(i, 0), len(tl.buckets)-1)]
}

func (tl *timeline) since() time.Duration { return time.Since(tl.t0) }

func (tl *timeline) request(kind, worker int) {
	b := tl.now()
	b.requests[kind].Add(1)
	if kind == tierOrigin {
		b.originByWorker[worker].Add(1)
	}
}

func (tl *timeline) hit(kind int) { tl.now().hits[kind].Add(1) }

func (tl *timeline) started(s sample) {
	tl.now().startsOK.Add(1)
	tl.mu.Lock()
	tl.lats = append(tl.lats, s)
	tl.mu.Unlock()
}

func (tl *timeline) runRead(d time.Duration, ok bool) {
	b := tl.now()
	if ok {
		b.runOK.Add(1)
	} else {
		b.runFailed.Add(1)
	}
	for {
		m := b.runMaxNS.Load()
		if int64(d) <= m || b.runMaxNS.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

// window summarises seconds [from, to) of the run.
type window struct {
	secs                       float64
	starts, rejected, failed   int64
	requests, hits             [nTiers]int64
	maxOriginSec, maxOriginWkr int64 // highest origin requests in one second: all workers, one worker
	runOK, runFailed           int64
	runMax                     time.Duration
	p50, p99, p999             time.Duration
	warm, cold                 class // starts served by L1 alone; starts that read the fleet or origin
	mem, fleet, origin         int64 // chunk reads of successful starts by serving tier
}

func (tl *timeline) window(from, to time.Duration) window {
	f, t := int(from/time.Second), min(int(to/time.Second), len(tl.buckets))
	w := window{secs: float64(t - f)}
	for i := f; i < t; i++ {
		b := &tl.buckets[i]
		w.starts += b.startsOK.Load()
		w.rejected += b.rejected.Load()
		w.failed += b.failed.Load()
		for k := range nTiers {
			w.requests[k] += b.requests[k].Load()
			w.hits[k] += b.hits[k].Load()
		}
		w.maxOriginSec = max(w.maxOriginSec, b.requests[tierOrigin].Load())
		for j := range b.originByWorker {
			w.maxOriginWkr = max(w.maxOriginWkr, b.originByWorker[j].Load())
		}
		w.runOK += b.runOK.Load()
		w.runFailed += b.runFailed.Load()
		w.runMax = max(w.runMax, time.Duration(b.runMaxNS.Load()))
	}
	var lats, warm, cold []time.Duration
	tl.mu.Lock()
	for _, s := range tl.lats {
		if s.at >= time.Duration(f)*time.Second && s.at < time.Duration(t)*time.Second {
			lats = append(lats, s.lat)
			if s.fleet+s.origin > 0 {
				cold = append(cold, s.lat)
			} else {
				warm = append(warm, s.lat)
			}
			w.mem += int64(s.mem)
			w.fleet += int64(s.fleet)
			w.origin += int64(s.origin)
		}
	}
	tl.mu.Unlock()
	w.p50, w.p99, w.p999 = quantile(lats, 0.5), quantile(lats, 0.99), quantile(lats, 0.999)
	w.warm, w.cold = classOf(warm), classOf(cold)
	return w
}

// class is the latency of one class of starts. Start latency is bimodal
// (docs/decisions/20261123-start-latency-classes.md): a start whose whole
// start set is in the worker's memory cache takes about a millisecond, one
// that reads the fleet ten or more, so the p50 and p99 of the mixture come
// from different classes whenever the share of either is between 1% and
// 99%. The sweep judges the loading starts by p99 ≤ 2× p50 and the L1-only
// ones against the loading starts' p50.
type class struct {
	n        int
	p50, p99 time.Duration
}

func classOf(ds []time.Duration) class {
	return class{n: len(ds), p50: quantile(ds, 0.5), p99: quantile(ds, 0.99)}
}

// minClass is the fewest starts a class needs in a step for its p99 to be
// judged: with fewer, the p99 is the slowest start or close to it.
const minClass = 50

// steady reports whether c meets p99 ≤ 2× p50 and whether it had enough
// starts to tell.
func (c class) steady() (ok, known bool) {
	if c.n < minClass {
		return true, false
	}
	return c.p99 <= 2*c.p50, true
}

func (w window) rate(n int64) float64 {
	if w.secs == 0 {
		return 0
	}
	return float64(n) / w.secs
}

func (w window) share(n int64) float64 {
	reads := w.mem + w.fleet + w.origin
	if reads == 0 {
		return 0
	}
	return 100 * float64(n) / float64(reads)
}

// quantile sorts ds and returns its p-quantile (0 for none).
func quantile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(p*float64(len(ds))))]
}

// writeSamples writes every successful start to path as CSV.
func (tl *timeline) writeSamples(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "at_s,latency_ms,mem,fleet,origin")
	tl.mu.Lock()
	for _, s := range tl.lats {
		fmt.Fprintf(w, "%.3f,%.3f,%d,%d,%d\n", s.at.Seconds(), float64(s.lat)/1e6, s.mem, s.fleet, s.origin)
	}
	tl.mu.Unlock()
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing samples to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := tl.writeProbes(strings.TrimSuffix(path, ".csv") + ".probes.csv"); err != nil {
		return err
	}
	return tl.writeFetches(strings.TrimSuffix(path, ".csv") + ".fleet.csv")
}

// writeFetches writes the fleet fetches' times to path as CSV.
func (tl *timeline) writeFetches(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "at_s,real_ms,drawn_ms")
	tl.probeMu.Lock()
	for _, x := range tl.fetches {
		fmt.Fprintf(w, "%.4f,%.3f,%.3f\n", x.at.Seconds(), float64(x.real)/1e6, float64(x.drawn)/1e6)
	}
	tl.probeMu.Unlock()
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing fleet fetch times to %s: %w", path, err)
	}
	return f.Close()
}

// writeProbes writes the scheduling probe's wake-ups to path as CSV.
func (tl *timeline) writeProbes(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "at_s,late_ms")
	tl.probeMu.Lock()
	for _, p := range tl.probes {
		fmt.Fprintf(w, "%.4f,%.3f\n", p.at.Seconds(), float64(p.late)/1e6)
	}
	tl.probeMu.Unlock()
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing probes to %s: %w", path, err)
	}
	return f.Close()
}
