package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachenode"
	"github.com/lode-dev/lode/internal/chunk"
)

// Soak budgets (the issue's): the agent's caches and the node's memory.
const (
	soakMemCache = 64 << 20
	soakDisk     = 256 << 20
	soakImages   = 3
	soakImage    = 128 << 20 // bytes of files per image: 384 MiB in all, > memory + disk
)

// procStatus returns a /proc/PID/status field in bytes (VmRSS, VmHWM).
func procStatus(pid int, field string) int64 {
	p := "/proc/self/status"
	if pid > 0 {
		p = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// runSoak builds the images, then runs two child processes of this program
// for d: an agent reading them (-scenario=agentload) and a cache node
// (-scenario=node) that this process loads with PUTs and GETs. It samples
// both children's RSS every second.
func runSoak(ctx context.Context, d time.Duration, readers int, seed uint64, nodeMem int64) error {
	dir, err := os.MkdirTemp("", "lode-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("building %d images of %s (512 KiB chunks) in %s\n", soakImages, mib(soakImage), dir)
	if _, err := buildWorld(ctx, dir, soakImages, soakImage, chunk.DefaultSize, seed, true); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	nodeCmd := exec.CommandContext(ctx, self, "-scenario=node", "-listen="+addr, fmt.Sprintf("-mem=%d", nodeMem))
	nodeCmd.Stderr = os.Stderr
	if err := nodeCmd.Start(); err != nil {
		return err
	}
	defer func() { nodeCmd.Process.Kill(); nodeCmd.Wait() }()
	agentCmd := exec.CommandContext(ctx, self, "-scenario=agentload", "-dir="+dir, fmt.Sprintf("-duration=%s", d),
		fmt.Sprintf("-readers=%d", readers), fmt.Sprintf("-seed=%d", seed))
	var agentOut bytes.Buffer
	agentCmd.Stdout, agentCmd.Stderr = &agentOut, os.Stderr
	if err := agentCmd.Start(); err != nil {
		return err
	}

	// Node load: new random chunks PUT (well past the budget, so the node
	// evicts all along) and GETs of recent ones.
	cl, err := cachefleet.NewClient(cachefleet.ClientConfig{Nodes: []string{"http://" + addr}, M: 4, K: 5, Timeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer cl.Close()
	loadCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
	}
	var puts, gets, hits atomic.Int64
	var wg sync.WaitGroup
	var recentMu sync.Mutex
	var recent []chunk.Name
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			ct := make([]byte, chunk.DefaultSize)
			for loadCtx.Err() == nil {
				if g%2 == 0 {
					for i := range ct {
						ct[i] = byte(rng.Uint32())
					}
					n := chunk.Name(sha256.Sum256(ct))
					if cl.Fill(loadCtx, n, ct) == nil {
						puts.Add(1)
						recentMu.Lock()
						recent = append(recent, n)
						if len(recent) > 1024 {
							recent = recent[512:]
						}
						recentMu.Unlock()
					}
					continue
				}
				recentMu.Lock()
				var n chunk.Name
				if len(recent) > 0 {
					n = recent[rng.IntN(len(recent))]
				}
				recentMu.Unlock()
				if _, err := cl.Fetch(loadCtx, n, ct[:0]); err == nil {
					hits.Add(1)
				}
				gets.Add(1)
			}
		}()
	}
	var nodePeak, agentPeak int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
sample:
	for {
		select {
		case <-loadCtx.Done():
			break sample
		case <-tick.C:
			nodePeak = max(nodePeak, procStatus(nodeCmd.Process.Pid, "VmRSS"))
			agentPeak = max(agentPeak, procStatus(agentCmd.Process.Pid, "VmRSS"))
		}
	}
	wg.Wait()
	nodeHWM := procStatus(nodeCmd.Process.Pid, "VmHWM")
	if err := agentCmd.Wait(); err != nil {
		return fmt.Errorf("agent load: %w\n%s", err, agentOut.String())
	}
	fmt.Print(agentOut.String())
	fmt.Printf("agent process: peak RSS sampled %s (memory cache budget %s, disk budget %s)\n", mib(agentPeak), mib(soakMemCache), mib(soakDisk))
	fmt.Printf("cache node: %d PUTs (%s), %d GETs (%d hits) in %s; peak RSS sampled %s, VmHWM %s (memory budget %s)\n",
		puts.Load(), mib(puts.Load()*chunk.DefaultSize), gets.Load(), hits.Load(), d, mib(nodePeak), mib(nodeHWM), mib(nodeMem))
	return nil
}

// runAgentLoad is the agent child of the soak: readers of random ranges of
// the world's images through one agent, checking every byte against the
// kept ext4 files; it prints its counts and VmHWM (reset after opening).
func runAgentLoad(ctx context.Context, dir string, d time.Duration, readers int, seed uint64) error {
	w, err := openWorld(ctx, dir, soakImages)
	if err != nil {
		return err
	}
	var files []*os.File
	for i := range w.images {
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf("img%d.ext4", i)))
		if err != nil {
			return err
		}
		defer f.Close()
		files = append(files, f)
	}
	dc, err := agent.NewDiskCache(filepath.Join(dir, "disk"), soakDisk, nil)
	if err != nil {
		return err
	}
	cfg := agent.DefaultConfig()
	cfg.Mem = agent.NewMemCache(soakMemCache)
	cfg.Tiers = []agent.Tier{dc, agent.NewOrigin(w.st, w.images[0].ptr.Root)}
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	ag, err := agent.New(cfg)
	if err != nil {
		return err
	}
	defer ag.Close()
	var ims []*agent.Image
	for _, im := range w.images {
		x, err := ag.Open(im.name, im.m)
		if err != nil {
			return err
		}
		ims = append(ims, x)
	}
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // reset VmHWM: the build is not the soak
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var reads, wrong, failed, nbytes atomic.Int64
	var wg sync.WaitGroup
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(r)))
			p := make([]byte, 1<<20)
			q := make([]byte, 1<<20)
			for runCtx.Err() == nil {
				k := rng.IntN(len(ims))
				size := w.images[k].m.ImageSize
				// Zipf-ish: half the reads in the first quarter of the image.
				off := rng.Int64N(size)
				if rng.IntN(2) == 0 {
					off = rng.Int64N(size / 4)
				}
				n := min(int64(4096+rng.IntN(len(p)-4096)), size-off)
				got, err := ims[k].ReadAt(runCtx, p[:n], off)
				reads.Add(1)
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
						failed.Add(1)
					}
					continue
				}
				files[k].ReadAt(q[:n], off)
				if int64(got) != n || !bytes.Equal(p[:n], q[:n]) {
					wrong.Add(1)
				}
				nbytes.Add(n)
			}
		}()
	}
	var peak int64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for runCtx.Err() == nil {
		select {
		case <-runCtx.Done():
		case <-tick.C:
			peak = max(peak, procStatus(0, "VmRSS"))
		}
	}
	wg.Wait()
	fmt.Printf("agent: %d readers, %d reads (%.0f/s, %.0f MiB/s), %d failed, %d wrong; memory cache %s of %s, disk cache %s of %s; VmHWM %s, peak RSS sampled %s\n",
		readers, reads.Load(), float64(reads.Load())/d.Seconds(), float64(nbytes.Load())/d.Seconds()/(1<<20), failed.Load(), wrong.Load(),
		mib(cfg.Mem.Bytes()), mib(soakMemCache), mib(dc.Bytes()), mib(soakDisk), mib(procStatus(0, "VmHWM")), mib(peak))
	if wrong.Load() > 0 || failed.Load() > 0 {
		return fmt.Errorf("%d wrong reads, %d failed reads", wrong.Load(), failed.Load())
	}
	return nil
}

// runNode serves one cache node on addr until ctx ends.
func runNode(ctx context.Context, addr string, memBytes int64) error {
	srv, err := cachenode.NewServer(cachenode.ServerConfig{MemBytes: memBytes})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return srv.Serve(ctx, l)
}
