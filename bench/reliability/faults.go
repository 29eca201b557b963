package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

var verbose = flag.Bool("v", false, "print an example error of each kind (faults)")

var errInjected = errors.New("injected origin error")

// faultStore is the origin with faults switched on and off by the schedule:
// reads fail at a rate, or stall until the stall ends or the caller gives up.
type faultStore struct {
	store.Store
	rate     atomic.Uint64 // error probability × 1e6
	stalled  atomic.Bool
	injected atomic.Int64
	stalls   atomic.Int64
	mu       sync.Mutex
	rng      *rand.Rand
}

func (f *faultStore) fault(ctx context.Context) error {
	if f.stalled.Load() {
		f.stalls.Add(1)
		for f.stalled.Load() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	if r := f.rate.Load(); r > 0 {
		f.mu.Lock()
		hit := f.rng.Uint64N(1e6) < r
		f.mu.Unlock()
		if hit {
			f.injected.Add(1)
			return errInjected
		}
	}
	return nil
}

func (f *faultStore) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	if err := f.fault(ctx); err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, key, dst)
}

func (f *faultStore) GetRange(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, error) {
	if err := f.fault(ctx); err != nil {
		return nil, err
	}
	return f.Store.GetRange(ctx, key, off, n, dst)
}

// node is an in-process cache node that can be killed (listener and every
// connection closed at once, memory lost) and restarted empty on the same
// address.
type node struct {
	addr string
	mu   sync.Mutex
	hs   *http.Server
}

func (n *node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, err := net.Listen("tcp", n.addr)
	if err != nil {
		return err
	}
	n.addr = l.Addr().String()
	srv, err := cachenode.NewServer(cachenode.ServerConfig{MemBytes: 32 << 20})
	if err != nil {
		l.Close()
		return err
	}
	n.hs = &http.Server{Handler: srv}
	go n.hs.Serve(l)
	return nil
}

func (n *node) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.hs != nil {
		n.hs.Close()
		n.hs = nil
	}
}

// fillCounter counts the disk cache's failed write-backs (a full disk).
type fillCounter struct {
	agent.Tier
	failed atomic.Int64
}

func (c *fillCounter) Fill(ctx context.Context, n chunk.Name, ct []byte) error {
	err := c.Tier.Fill(ctx, n, ct)
	if err != nil {
		c.failed.Add(1)
	}
	return err
}

// worker is the agent and its open images; the schedule replaces it.
type worker struct {
	mu   sync.RWMutex
	ag   *agent.Agent
	ims  []*agent.Image
	open func() (*agent.Agent, []*agent.Image, error)
}

func (w *worker) reopen() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ag != nil {
		w.ag.Close()
	}
	ag, ims, err := w.open()
	w.ag, w.ims = ag, ims
	return err
}

func (w *worker) image(i int) *agent.Image {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.ims[i]
}

const (
	fetchTimeout = 2 * time.Second
	readDeadline = fetchTimeout + time.Second
	// latencySlack is how late past its deadline a failed read may return
	// (scheduling on a loaded 2-core machine) before it counts as a hang.
	latencySlack = 500 * time.Millisecond
)

func runFaults(ctx context.Context, d time.Duration, readers int, seed uint64) error {
	dir, err := os.MkdirTemp("", "lode-faults-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("building 2 images of 24 MiB (128 KiB chunks) in %s\n", dir)
	w, err := newWorld(ctx, dir, 2, 24<<20, 128<<10, seed)
	if err != nil {
		return err
	}

	// The L1 disk: a 8 MiB tmpfs under a 64 MiB budget, so it fills and
	// every write-back past that fails with ENOSPC.
	diskDir := filepath.Join(dir, "disk")
	os.Mkdir(diskDir, 0o755)
	diskNote := "8 MiB tmpfs, 64 MiB budget (fills: write-backs fail with ENOSPC)"
	diskBudget := int64(64 << 20)
	if err := syscall.Mount("tmpfs", diskDir, "tmpfs", 0, "size=8m"); err != nil {
		diskNote = fmt.Sprintf("no tmpfs (%v): an 8 MiB budget instead", err)
		diskBudget = 8 << 20
	} else {
		defer syscall.Unmount(diskDir, syscall.MNT_DETACH)
	}

	nodes := make([]*node, 5)
	var urls []string
	for i := range nodes {
		nodes[i] = &node{addr: fmt.Sprintf("127.0.0.%d:0", 2+i)}
		if err := nodes[i].start(); err != nil {
			nodes[i].addr = "127.0.0.1:0"
			if err := nodes[i].start(); err != nil {
				return err
			}
		}
		urls = append(urls, "http://"+nodes[i].addr)
		defer nodes[i].kill()
	}
	fleet, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: urls, M: 4, K: 5})
	if err != nil {
		return err
	}
	defer fleet.Close()
	origin := &faultStore{Store: w.st, rng: rand.New(rand.NewPCG(seed, 11))}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var disks []*fillCounter
	wk := &worker{open: func() (*agent.Agent, []*agent.Image, error) {
		dc, err := agent.NewDiskCache(diskDir, diskBudget, quiet)
		if err != nil {
			return nil, nil, err
		}
		fc := &fillCounter{Tier: dc}
		disks = append(disks, fc)
		ag, err := agent.New(agent.Config{
			Mem:          agent.NewMemCache(4 << 20),
			Tiers:        []agent.Tier{fc, fleet, agent.NewOrigin(origin, w.images[0].ptr.Root)},
			FetchTimeout: fetchTimeout, ReadAhead: 2, Log: quiet,
		})
		if err != nil {
			return nil, nil, err
		}
		var ims []*agent.Image
		for _, im := range w.images {
			x, err := ag.Open(im.name, im.m)
			if err != nil {
				return nil, nil, err
			}
			ims = append(ims, x)
		}
		return ag, ims, nil
	}}
	if err := wk.reopen(); err != nil {
		return err
	}
	defer func() { wk.mu.Lock(); wk.ag.Close(); wk.mu.Unlock() }()

	// Readers.
	type tally struct {
		ok, wrong, partial, late int64
		bytes                    int64
		errs                     map[string]int64
		example                  map[string]string
		maxOK, maxErr            time.Duration
		lat                      []time.Duration
	}
	results := make([]tally, readers)
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := &results[r]
			t.errs = map[string]int64{}
			t.example = map[string]string{}
			rng := rand.New(rand.NewPCG(seed, uint64(100+r)))
			buf := make([]byte, 256<<10)
			for runCtx.Err() == nil {
				k := rng.IntN(len(w.images))
				im := w.images[k]
				size := im.m.ImageSize
				off := rng.Int64N(size)
				p := buf[:min(int64(1+rng.IntN(len(buf))), size-off)]
				rctx, rcancel := context.WithTimeout(context.Background(), readDeadline)
				t0 := time.Now()
				n, err := wk.image(k).ReadAt(rctx, p, off)
				lat := time.Since(t0)
				rcancel()
				t.lat = append(t.lat, lat)
				if err != nil {
					t.errs[classify(err)]++
					t.example[classify(err)] = err.Error()
					t.maxErr = max(t.maxErr, lat)
					if n != 0 {
						t.partial++
					}
					if lat > readDeadline+latencySlack {
						t.late++
					}
					continue
				}
				if n != len(p) || !im.equal(p, off) {
					t.wrong++
					continue
				}
				t.ok++
				t.bytes += int64(n)
				t.maxOK = max(t.maxOK, lat)
			}
		}()
	}

	// The schedule, in fractions of the run.
	var events []string
	var kills, restarts, reopens atomic.Int64
	logf := func(format string, a ...any) {
		events = append(events, fmt.Sprintf("%6.1fs  ", time.Since(start).Seconds())+fmt.Sprintf(format, a...))
	}
	at := func(frac float64) time.Time { return start.Add(time.Duration(frac * float64(d))) }
	sched := []struct {
		when time.Time
		do   func()
	}{
		{at(0.15), func() { origin.rate.Store(50_000); logf("origin: 5%% of reads fail") }},
		{at(0.35), func() { origin.rate.Store(0); logf("origin: errors off") }},
		{at(0.45), func() { origin.stalled.Store(true); logf("origin: stalled") }},
		{at(0.45).Add(10 * time.Second), func() { origin.stalled.Store(false); logf("origin: stall over") }},
		{at(0.75), func() {
			nodes[0].kill()
			nodes[1].kill()
			kills.Add(2)
			logf("nodes 0 and 1 killed (fewer than M of K left for their shards)")
		}},
		{at(0.75).Add(3 * time.Second), func() {
			for _, i := range []int{0, 1} {
				if err := nodes[i].start(); err != nil {
					logf("restarting node %d: %v", i, err)
					continue
				}
				restarts.Add(1)
			}
			logf("nodes 0 and 1 restarted empty")
		}},
	}
	for _, f := range []float64{0.3, 0.6, 0.9} {
		sched = append(sched, struct {
			when time.Time
			do   func()
		}{at(f), func() {
			if err := wk.reopen(); err != nil {
				logf("reopening the agent: %v", err)
				return
			}
			reopens.Add(1)
			logf("agent closed and reopened (disk cache rescanned)")
		}})
	}
	// A node killed every 5 s, restarted 3 s later (not during the double kill).
	rng := rand.New(rand.NewPCG(seed, 17))
	for t := 5 * time.Second; t < d-3*time.Second; t += 5 * time.Second {
		if f := float64(t) / float64(d); f > 0.7 && f < 0.85 {
			continue
		}
		i := 2 + rng.IntN(3)
		sched = append(sched,
			struct {
				when time.Time
				do   func()
			}{start.Add(t), func() { nodes[i].kill(); kills.Add(1); logf("node %d killed", i) }},
			struct {
				when time.Time
				do   func()
			}{start.Add(t + 3*time.Second), func() {
				if err := nodes[i].start(); err != nil {
					logf("restarting node %d: %v", i, err)
					return
				}
				restarts.Add(1)
				logf("node %d restarted empty", i)
			}})
	}
	sort.Slice(sched, func(i, j int) bool { return sched[i].when.Before(sched[j].when) })
	for _, s := range sched {
		select {
		case <-runCtx.Done():
		case <-time.After(time.Until(s.when)):
			s.do()
		}
	}
	<-runCtx.Done()
	wg.Wait()
	elapsed := time.Since(start)
	origin.stalled.Store(false)
	origin.rate.Store(0)

	// Totals.
	var tot tally
	tot.errs = map[string]int64{}
	tot.example = map[string]string{}
	for _, t := range results {
		tot.ok += t.ok
		tot.wrong += t.wrong
		tot.partial += t.partial
		tot.late += t.late
		tot.bytes += t.bytes
		tot.maxOK = max(tot.maxOK, t.maxOK)
		tot.maxErr = max(tot.maxErr, t.maxErr)
		tot.lat = append(tot.lat, t.lat...)
		for k, v := range t.errs {
			tot.errs[k] += v
			tot.example[k] = t.example[k]
		}
	}
	sort.Slice(tot.lat, func(i, j int) bool { return tot.lat[i] < tot.lat[j] })
	var nerr int64
	for _, v := range tot.errs {
		nerr += v
	}
	var fillFails int64
	for _, fc := range disks {
		fillFails += fc.failed.Load()
	}
	reads := tot.ok + tot.wrong + nerr
	pct := func(q float64) time.Duration { return tot.lat[min(len(tot.lat)-1, int(q*float64(len(tot.lat))))] }
	fmt.Println("\nschedule:")
	for _, e := range events {
		fmt.Println(" ", e)
	}
	fmt.Printf("\nload: %d readers, %s, %d reads = %.0f reads/s, %.1f MiB/s correct bytes\n",
		readers, elapsed.Round(time.Second), reads, float64(reads)/elapsed.Seconds(), float64(tot.bytes)/elapsed.Seconds()/(1<<20))
	fmt.Printf("latency: p50 %v, p99 %v, max of successful reads %v, max of failed reads %v (deadline %v)\n",
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), tot.maxOK.Round(time.Millisecond), tot.maxErr.Round(time.Millisecond), readDeadline)
	fmt.Printf("faults: %d node kills, %d node restarts, %d injected origin errors, %d origin reads stalled, %d agent reopens, %d failed disk write-backs (%s)\n",
		kills.Load(), restarts.Load(), origin.injected.Load(), origin.stalls.Load(), reopens.Load(), fillFails, diskNote)
	fmt.Printf("outcomes: %d correct, %d failed cleanly, %d wrong bytes, %d errors with n != 0, %d failures later than deadline+%v\n",
		tot.ok, nerr, tot.wrong, tot.partial, tot.late, latencySlack)
	kinds := make([]string, 0, len(tot.errs))
	for k := range tot.errs {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Printf("  error %-40s %d\n", k, tot.errs[k])
		if *verbose {
			fmt.Printf("      e.g. %s\n", strings.ReplaceAll(tot.example[k], "\n", " | "))
		}
	}
	checked, err := w.check(context.Background())
	if err != nil {
		return fmt.Errorf("store damaged after the run: %w", err)
	}
	fmt.Printf("store: %d objects re-verified after the run, all intact\n", checked)
	if tot.wrong > 0 || tot.partial > 0 || tot.late > 0 {
		return fmt.Errorf("%d wrong reads, %d partial errors, %d late failures", tot.wrong, tot.partial, tot.late)
	}
	return nil
}

// classify names the cause of a failed read.
func classify(err error) string {
	switch {
	case errors.Is(err, agent.ErrClosed):
		return "agent closed (reopen)"
	case errors.Is(err, errInjected) && errors.Is(err, context.DeadlineExceeded):
		return "origin error + deadline"
	case errors.Is(err, errInjected):
		return "origin error (injected)"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline (origin stalled)"
	case errors.Is(err, context.Canceled):
		// Agent.Close cancels fetches in flight; the cause is
		// context.Canceled, not ErrClosed (see docs/reliability.md).
		return "fetch cancelled by agent close"
	case errors.Is(err, chunk.ErrCorrupt):
		return "corrupt"
	case errors.Is(err, store.ErrNotFound):
		return "not found"
	case errors.Is(err, agent.ErrIO):
		return "EIO: " + firstLine(err)
	}
	return "other: " + firstLine(err)
}

func firstLine(err error) string {
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return strings.SplitN(s, "\n", 2)[0]
}
