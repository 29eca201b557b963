package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/manifest"
)

// replayConfig describes the simulated workload. Every image is one base
// layer (shared by PerBase images) followed by its own layer; a container
// start reads ReadFrac of the image's chunks, BaseShare of them from the
// base. Which chunks: each image has a fixed start set (the files its
// entrypoint opens), drawn once from Zipf chunk popularity within each
// layer, so images on one base share the base's hot chunks (libc, the
// interpreter); on each start every chunk of the set is, with probability
// Jitter, replaced by another draw from the same layer (runtime variation).
type replayConfig struct {
	Workers, Bases, PerBase    int
	BaseChunks, OwnChunks      int
	Starts, StartConc          int
	ReadFrac, BaseShare, ZipfS float64
	Jitter                     float64
	MemMiB, DiskMiB            int64
	Nodes                      int
	NodeMemMiB                 int64
	OriginMedian               time.Duration
	OriginSigma                float64
	Seed                       uint64
}

func (c *replayConfig) flags(f *flag.FlagSet) {
	f.IntVar(&c.Workers, "workers", 8, "replay: simulated workers (one agent each)")
	f.IntVar(&c.Bases, "bases", 3, "replay: base layers")
	f.IntVar(&c.PerBase, "images-per-base", 30, "replay: images on each base")
	f.IntVar(&c.BaseChunks, "base-chunks", 384, "replay: 512 KiB chunks in a base layer")
	f.IntVar(&c.OwnChunks, "own-chunks", 128, "replay: 512 KiB chunks in an image's own layer")
	f.IntVar(&c.Starts, "starts", 2000, "replay: container starts in the trace")
	f.IntVar(&c.StartConc, "start-conc", 8, "replay: parallel chunk reads within one start")
	f.Float64Var(&c.ReadFrac, "read-frac", 0.064, "replay: share of an image's chunks a start reads")
	f.Float64Var(&c.BaseShare, "base-share", 0.8, "replay: share of a start's reads that hit the base layer")
	f.Float64Var(&c.ZipfS, "zipf", 1.1, "replay: Zipf exponent of image popularity and of chunk popularity within a layer")
	f.Float64Var(&c.Jitter, "jitter", 0.1, "replay: chance each start-set chunk is replaced by another draw")
	f.Int64Var(&c.MemMiB, "l1-mem", 64, "replay: worker memory cache, MiB")
	f.Int64Var(&c.DiskMiB, "l1-disk", 256, "replay: worker disk cache, MiB")
	f.IntVar(&c.Nodes, "fleet-nodes", 5, "replay: in-process fleet nodes on 127.0.0.2..")
	f.Int64Var(&c.NodeMemMiB, "node-mem", 0, "replay: memory per fleet node, MiB (0: 1.5× the touched chunks' shards)")
	f.DurationVar(&c.OriginMedian, "origin-median", 36*time.Millisecond, "replay: origin latency median (log-normal)")
	f.Float64Var(&c.OriginSigma, "origin-sigma", 0.5, "replay: origin latency log-normal sigma")
}

const replayRoot = "bench"

type chunkID struct{ layer, idx int }

type start struct {
	image, worker int
	chunks        []int // chunk indices in the image
}

type trace struct {
	starts    []start
	startSets [][]int
	touched   map[chunkID]bool
}

// zipfDistinct draws n distinct values from z.
func zipfDistinct(z *rand.Zipf, n int) []int {
	seen := map[int]bool{}
	var out []int
	for len(out) < n {
		v := int(z.Uint64())
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func (c replayConfig) layerOf(image, idx int) chunkID {
	if idx < c.BaseChunks {
		return chunkID{image % c.Bases, idx}
	}
	return chunkID{c.Bases + image, idx - c.BaseChunks}
}

func (c replayConfig) makeTrace() trace {
	r := rand.New(rand.NewPCG(c.Seed, 0x5eed))
	images := c.Bases * c.PerBase
	nRead := int(math.Round(c.ReadFrac * float64(c.BaseChunks+c.OwnChunks)))
	nBase := int(math.Round(c.BaseShare * float64(nRead)))
	nOwn := nRead - nBase
	baseZ := rand.NewZipf(r, c.ZipfS, 1, uint64(c.BaseChunks-1))
	ownZ := rand.NewZipf(r, c.ZipfS, 1, uint64(c.OwnChunks-1))
	t := trace{touched: map[chunkID]bool{}}
	for range images {
		set := zipfDistinct(baseZ, nBase)
		for _, j := range zipfDistinct(ownZ, nOwn) {
			set = append(set, c.BaseChunks+j)
		}
		t.startSets = append(t.startSets, set)
	}
	rank := r.Perm(images) // popularity rank -> image
	imgZ := rand.NewZipf(r, c.ZipfS, 1, uint64(images-1))
	for range c.Starts {
		img := rank[imgZ.Uint64()]
		s := start{image: img, worker: r.IntN(c.Workers)}
		in := map[int]bool{}
		for _, j := range t.startSets[img] {
			if r.Float64() < c.Jitter {
				if j < c.BaseChunks {
					j = int(baseZ.Uint64())
				} else {
					j = c.BaseChunks + int(ownZ.Uint64())
				}
			}
			if !in[j] {
				in[j] = true
				s.chunks = append(s.chunks, j)
			}
		}
		for _, j := range s.chunks {
			t.touched[c.layerOf(img, j)] = true
		}
		t.starts = append(t.starts, s)
	}
	return t
}

// plaintext returns the deterministic contents of a layer's chunk.
func plaintext(seed uint64, id chunkID, dst []byte) []byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[0:], seed)
	binary.LittleEndian.PutUint64(s[8:], uint64(id.layer))
	binary.LittleEndian.PutUint64(s[16:], uint64(id.idx))
	dst = dst[:chunkSize]
	rand.NewChaCha8(s).Read(dst)
	return dst
}

// synthOrigin is the origin tier: it regenerates and seals a chunk on demand
// (nothing is held in memory) after a log-normal delay.
type synthOrigin struct {
	seed   uint64
	sealer *chunk.Sealer
	ids    map[chunk.Name]chunkID
	median time.Duration
	sigma  float64

	mu    sync.Mutex
	r     *rand.Rand
	count atomic.Int64
	wait  atomic.Int64 // ns slept
}

func (o *synthOrigin) Name() string                                   { return "origin" }
func (o *synthOrigin) Fill(context.Context, chunk.Name, []byte) error { return nil }

func (o *synthOrigin) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	id, ok := o.ids[n]
	if !ok {
		return nil, fmt.Errorf("origin: chunk %s was never built", n)
	}
	o.mu.Lock()
	d := time.Duration(float64(o.median) * math.Exp(o.sigma*o.r.NormFloat64()))
	o.mu.Unlock()
	o.count.Add(1)
	o.wait.Add(int64(d))
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	plain := plaintext(o.seed, id, make([]byte, chunkSize))
	_, ct, err := o.sealer.Seal(plain, []byte(replayRoot), dst)
	return ct, err
}

type startResult struct {
	pos                      int
	mem, disk, fleet, origin int64
	errs                     int64
	reads                    int
	elapsed                  time.Duration
}

func runReplay(ctx context.Context, c replayConfig) error {
	t0 := time.Now()
	tr := c.makeTrace()
	sealer, err := chunk.NewSealer(bytes.Repeat([]byte{7}, chunk.SecretSize))
	if err != nil {
		return err
	}
	// Seal every chunk the trace touches, to know its name and key.
	ids := make([]chunkID, 0, len(tr.touched))
	for id := range tr.touched {
		ids = append(ids, id)
	}
	refs := make([]chunk.Ref, len(ids))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunkSize)
			ct := make([]byte, 0, chunkSize+chunk.Overhead)
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return
				}
				refs[i], _, _ = sealer.Seal(plaintext(c.Seed, ids[i], buf), []byte(replayRoot), ct)
			}
		}()
	}
	wg.Wait()
	refOf := make(map[chunkID]chunk.Ref, len(ids))
	origin := &synthOrigin{seed: c.Seed, sealer: sealer, ids: map[chunk.Name]chunkID{}, median: c.OriginMedian, sigma: c.OriginSigma, r: rand.New(rand.NewPCG(c.Seed, 36))}
	for i, id := range ids {
		refOf[id] = refs[i]
		origin.ids[refs[i].Name] = id
	}
	images := c.Bases * c.PerBase
	manifests := make([]*manifest.Manifest, images)
	per := c.BaseChunks + c.OwnChunks
	for img := range images {
		m := &manifest.Manifest{Root: replayRoot, ChunkSize: chunkSize, ImageSize: int64(per) * chunkSize, FSType: "ext4"}
		for j := range per {
			id := c.layerOf(img, j)
			ref, ok := refOf[id]
			if !ok { // never read (read-ahead is off): a name no tier holds
				ref.Name = sha256.Sum256(fmt.Appendf(nil, "untouched %d/%d", id.layer, id.idx))
			}
			m.Names = append(m.Names, ref.Name)
			m.Keys = append(m.Keys, ref.Key)
		}
		manifests[img] = m
	}
	shardBytes := int64(len(ids)) * (fleetproto.HeaderSize + chunkSize/4) * 5
	nodeMem := c.NodeMemMiB << 20
	if nodeMem == 0 {
		nodeMem = shardBytes * 3 / 2 / int64(c.Nodes)
	}
	fmt.Printf("trace: %d starts of %d images (%d bases × %d), %d reads/start (%.0f%% base), %d distinct chunks touched (%d MiB); setup %.1f s\n",
		len(tr.starts), images, c.Bases, c.PerBase, len(tr.startSets[0]), c.BaseShare*100, len(ids), int64(len(ids))*chunkSize>>20, time.Since(t0).Seconds())

	// The fleet: in-process nodes on distinct loopback addresses.
	sctx, stopNodes := context.WithCancel(context.Background())
	var nodes []string
	var serving sync.WaitGroup
	for i := range c.Nodes {
		srv, err := cachenode.NewServer(cachenode.ServerConfig{MemBytes: nodeMem})
		if err != nil {
			stopNodes()
			return err
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", 2+i))
		if err != nil {
			stopNodes()
			return fmt.Errorf("listening for fleet node %d: %w", i, err)
		}
		nodes = append(nodes, "http://"+l.Addr().String())
		serving.Add(1)
		go func() { defer serving.Done(); srv.Serve(sctx, l) }()
	}
	defer func() { stopNodes(); serving.Wait() }()

	dir, err := os.MkdirTemp("", "lode-fleet-replay-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	type worker struct {
		a     *agent.Agent
		fleet *cachefleet.Client
	}
	workers := make([]worker, c.Workers)
	for w := range workers {
		disk, err := agent.NewDiskCache(filepath.Join(dir, fmt.Sprint(w)), c.DiskMiB<<20, nil)
		if err != nil {
			return err
		}
		fl, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: nodes})
		if err != nil {
			return err
		}
		defer fl.Close()
		a, err := agent.New(agent.Config{Mem: agent.NewMemCache(c.MemMiB << 20), Tiers: []agent.Tier{disk, fl, origin}, ReadAhead: 0})
		if err != nil {
			return err
		}
		defer a.Close()
		workers[w] = worker{a, fl}
	}

	results := make([]startResult, len(tr.starts))
	var wwg sync.WaitGroup
	runStart := time.Now()
	var failed atomic.Value
	for w := range workers {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			bufs := make([][]byte, c.StartConc)
			for i := range bufs {
				bufs[i] = make([]byte, chunkSize)
			}
			for pos, s := range tr.starts {
				if s.worker != w || ctx.Err() != nil {
					continue
				}
				res, err := doStart(ctx, workers[w].a, fmt.Sprintf("img%d", s.image), manifests[s.image], s.chunks, bufs)
				if err != nil {
					failed.CompareAndSwap(nil, err)
				}
				res.pos = pos
				results[pos] = res
			}
		}()
	}
	wwg.Wait()
	wall := time.Since(runStart)
	if err := ctx.Err(); err != nil {
		return err
	}
	if err, _ := failed.Load().(error); err != nil {
		fmt.Println("first read error:", err)
	}

	type window struct {
		name     string
		from, to int // start positions, [from, to)
	}
	n := len(results)
	windows := []window{{"all starts", 0, n}, {"first 25% (cold caches)", 0, n / 4}, {"last 50% (steady state)", n / 2, n}}
	fmt.Println()
	fmt.Println("| window | chunk reads | L1 mem | L1 disk | **L1 total** | **fleet** | **origin** | read errors | start p50 / p99 ms |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, win := range windows {
		var mem, disk, fleet, orig, errs, reads int64
		var lat []time.Duration
		for _, r := range results[win.from:win.to] {
			mem += r.mem
			disk += r.disk
			fleet += r.fleet
			orig += r.origin
			errs += r.errs
			reads += int64(r.reads)
			lat = append(lat, r.elapsed)
		}
		slices.Sort(lat)
		pct := func(v int64) string { return fmt.Sprintf("%.2f%%", 100*float64(v)/float64(reads)) }
		fmt.Printf("| %s | %d | %s | %s | %s | %s | %s | %d | %s / %s |\n", win.name, reads, pct(mem), pct(disk), pct(mem+disk), pct(fleet), pct(orig), errs,
			ms(lat[len(lat)/2]), ms(lat[min(len(lat)-1, len(lat)*99/100)]))
	}
	fmt.Println("| paper (reference) | | | | 67% | 32% | 0.06% | | |")
	fmt.Println()
	fmt.Printf("workers %d (L1 %d MiB mem + %d MiB disk each), fleet %d in-process nodes × %d MiB mem, origin log-normal median %v σ %.1f (%d fetches, mean %.1f ms)\n",
		c.Workers, c.MemMiB, c.DiskMiB, c.Nodes, nodeMem>>20, c.OriginMedian, c.OriginSigma, origin.count.Load(),
		float64(origin.wait.Load())/1e6/math.Max(1, float64(origin.count.Load())))
	fmt.Printf("replay wall time %.1f s (%.0f starts/s), total with setup %.1f s\n", wall.Seconds(), float64(n)/wall.Seconds(), time.Since(t0).Seconds())
	return nil
}

// doStart opens the image on a, reads the chunks with len(bufs) readers and
// returns what each tier served.
func doStart(ctx context.Context, a *agent.Agent, name string, m *manifest.Manifest, chunks []int, bufs [][]byte) (startResult, error) {
	t0 := time.Now()
	im, err := a.Open(name, m)
	if err != nil {
		return startResult{}, err
	}
	defer im.Close()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, len(bufs))
	for w := range bufs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(chunks) {
					return
				}
				if _, err := im.ReadAt(ctx, bufs[w], int64(chunks[i])*chunkSize); err != nil && errs[w] == nil {
					errs[w] = err
				}
			}
		}()
	}
	wg.Wait()
	st := im.Stats()
	r := startResult{reads: len(chunks), mem: st.MemHits, errs: st.FetchErrors, elapsed: time.Since(t0)}
	for _, ts := range st.Tiers {
		switch ts.Tier {
		case "disk":
			r.disk = ts.Hits
		case "fleet":
			r.fleet = ts.Hits
		case "origin":
			r.origin = ts.Hits
		}
	}
	if sum := r.mem + r.disk + r.fleet + r.origin + r.errs; sum != int64(r.reads) {
		return r, fmt.Errorf("start of %s: %d reads but tiers account for %d", name, r.reads, sum)
	}
	return r, errors.Join(errs...)
}
