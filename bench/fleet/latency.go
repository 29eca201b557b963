package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/chunk"
)

const chunkSize = 512 << 10

type latencyConfig struct {
	Nodes   []string
	Chunks  int
	Reads   int
	Conc    []int
	StopPID int
	Timeout time.Duration
	Seed    uint64
	// Linger and MaxWaiting set the client's fields (0: its defaults).
	Linger     time.Duration
	MaxWaiting int
	// Before approximates the client before issue #5's fix: a request
	// Fetch no longer needs is cancelled at once (its connection closed),
	// and requests to a stalled node are not capped.
	Before bool
}

// randomChunks returns count random "ciphertexts" of size bytes and their
// names (the fleet only checks that a chunk hashes to its name).
func randomChunks(seed uint64, count, size int) ([][]byte, []chunk.Name) {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	data := make([][]byte, count)
	names := make([]chunk.Name, count)
	for i := range data {
		data[i] = make([]byte, size)
		r.Read(data[i])
		names[i] = chunk.NameOf(data[i])
	}
	return data, names
}

// fillAll writes every chunk through c, conc at a time.
func fillAll(ctx context.Context, c *cachefleet.Client, data [][]byte, names []chunk.Name, conc int) error {
	var next atomic.Int64
	errs := make([]error, conc)
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(data) || ctx.Err() != nil {
					return
				}
				if err := c.Fill(ctx, names[i], data[i]); err != nil {
					errs[w] = fmt.Errorf("filling chunk %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// clientDials counts connections the benchmark's client dialed.
var clientDials atomic.Int64

type sample struct {
	connects int64 // TCP connections opened on the machine meanwhile
	dials    int64 // connections the client dialed meanwhile
	lat      []time.Duration
	errs     int
	elapsed  time.Duration
	firstErr error
}

// measure fetches reads random chunks of names, conc at a time, and records
// each Fetch's latency.
func measure(ctx context.Context, c *cachefleet.Client, names []chunk.Name, reads, conc int, seed uint64) sample {
	order := make([]int, reads)
	r := rand.New(rand.NewPCG(seed, 99))
	for i := range order {
		order[i] = r.IntN(len(names))
	}
	var next atomic.Int64
	lats := make([][]time.Duration, conc)
	errs := make([]int, conc)
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	opens, dials := activeOpens(), clientDials.Load()
	start := time.Now()
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, chunkSize)
			for {
				i := int(next.Add(1) - 1)
				if i >= reads || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				_, err := c.Fetch(ctx, names[order[i]], buf)
				lats[w] = append(lats[w], time.Since(t0))
				if err != nil {
					errs[w]++
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	s := sample{elapsed: time.Since(start), firstErr: firstErr, connects: activeOpens() - opens, dials: clientDials.Load() - dials}
	for w := range conc {
		s.lat = append(s.lat, lats[w]...)
		s.errs += errs[w]
	}
	slices.Sort(s.lat)
	return s
}

func (s sample) pct(p float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	i := int(p/100*float64(len(s.lat)) + 0.5)
	return s.lat[min(max(i-1, 0), len(s.lat)-1)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }

func runLatency(ctx context.Context, c latencyConfig) error {
	if len(c.Nodes) == 0 {
		return errors.New("latency: -nodes is required")
	}
	cfg := cachefleet.ClientConfig{Nodes: c.Nodes, Timeout: c.Timeout, Linger: c.Linger, MaxWaiting: c.MaxWaiting}
	if c.Before {
		cfg.Linger, cfg.MaxWaiting = time.Nanosecond, 1<<30
	}
	fmt.Printf("client: Linger %v, MaxWaiting %d (0: defaults 1s, 16)\n", cfg.Linger, cfg.MaxWaiting)
	// The client's own connections, counted exactly (the kernel's count is
	// machine-wide).
	tr := cachefleet.NewTransport()
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		clientDials.Add(1)
		return dial(ctx, network, addr)
	}
	cfg.Transport = tr
	cl, err := cachefleet.NewClient(cfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	t0 := time.Now()
	data, names := randomChunks(c.Seed, c.Chunks, chunkSize)
	if err := fillAll(ctx, cl, data, names, 8); err != nil {
		return err
	}
	data = nil
	fmt.Printf("filled %d chunks of 512 KiB (4+1 shards over %d nodes) in %.1f s\n", c.Chunks, len(c.Nodes), time.Since(t0).Seconds())
	// Warm the connection pools and the nodes' memory paths.
	if s := measure(ctx, cl, names, min(c.Chunks, 1000), 8, c.Seed+1); s.errs > 0 {
		return fmt.Errorf("warm-up: %d of %d fetches failed: %w", s.errs, len(s.lat), s.firstErr)
	}

	type row struct {
		phase string
		conc  int
		s     sample
	}
	var rows []row
	run := func(phase string) {
		for _, conc := range c.Conc {
			s := measure(ctx, cl, names, c.Reads, conc, c.Seed+uint64(conc)*7+uint64(len(rows)))
			rows = append(rows, row{phase, conc, s})
			fmt.Printf("  %-16s conc %-2d  %5d fetches  p50 %s ms  p99 %s ms  errors %d\n", phase, conc, len(s.lat), ms(s.pct(50)), ms(s.pct(99)), s.errs)
			if s.firstErr != nil {
				fmt.Printf("    first error: %v\n", s.firstErr)
			}
		}
	}
	run("healthy")
	if c.StopPID > 0 {
		if err := syscall.Kill(c.StopPID, syscall.SIGSTOP); err != nil {
			return fmt.Errorf("stopping node pid %d: %w", c.StopPID, err)
		}
		thawed := false
		thaw := func() {
			if !thawed {
				syscall.Kill(c.StopPID, syscall.SIGCONT)
				thawed = true
			}
		}
		defer thaw()
		time.Sleep(200 * time.Millisecond)
		run("one stopped")
		thaw()
		time.Sleep(500 * time.Millisecond)
		// Let the thawed node drain the requests queued while stopped.
		measure(ctx, cl, names, 500, 8, c.Seed+77)
		run("healthy again")
	}

	fmt.Println()
	fmt.Println("| phase | concurrency | fetches | fetches/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | client dials per fetch | TCP connects per fetch (machine) |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		s := r.s
		fmt.Printf("| %s | %d | %d | %.0f | %s | %s | %s | %s | %s | %d | %.3f | %.2f |\n", r.phase, r.conc, len(s.lat),
			float64(len(s.lat))/s.elapsed.Seconds(), ms(s.pct(50)), ms(s.pct(90)), ms(s.pct(99)), ms(s.pct(99.9)), ms(s.lat[len(s.lat)-1]), s.errs,
			float64(s.dials)/float64(len(s.lat)), float64(s.connects)/float64(len(s.lat)))
	}
	if c.StopPID > 0 {
		fmt.Println()
		for _, conc := range c.Conc {
			var h, st, h2 sample
			for _, r := range rows {
				if r.conc != conc {
					continue
				}
				switch r.phase {
				case "healthy":
					h = r.s
				case "one stopped":
					st = r.s
				case "healthy again":
					h2 = r.s
				}
			}
			fmt.Printf("concurrency %d: p99(one stopped)/p99(healthy) = %.2f (goal ≤ 1.5); against healthy-again %.2f; p50 ratio %.2f\n",
				conc, float64(st.pct(99))/float64(h.pct(99)), float64(st.pct(99))/float64(h2.pct(99)), float64(st.pct(50))/float64(h.pct(50)))
		}
	}
	return nil
}

// activeOpens reads the kernel's count of TCP connections opened (Tcp
// ActiveOpens in /proc/net/snmp; machine-wide, so other jobs add noise).
func activeOpens() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0
	}
	var head []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, h := range head {
			if h == "ActiveOpens" && i < len(f) {
				n, _ := strconv.ParseInt(f[i], 10, 64)
				return n
			}
		}
	}
	return 0
}
