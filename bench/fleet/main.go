// Command fleet measures the cache fleet (issue #5, docs/fleet.md
// "Benchmark"). bench/fleet.sh starts the processes and runs it; each
// scenario can also be run alone:
//
//	go run ./bench/fleet -scenario=latency -nodes=127.0.0.2:7431,... -stop-pid=PID
//	go run ./bench/fleet -scenario=shards  -nodes=127.0.0.1:7500 -www=DIR
//	go run ./bench/fleet -scenario=replay
//
// latency: fills random 512 KiB chunks through the client, then measures
// Fetch latency with every node healthy, with one node SIGSTOPped (the
// process given by -stop-pid), and healthy again after SIGCONT.
//
// shards: fills chunks into one node and copies every shard it holds into
// DIR/v1/shards/{chunk}/{i}, so nginx can serve the same bytes at the same
// paths, and writes DIR/paths.txt for wrk.
//
// replay: a skewed workload (images sharing base layers, Zipf popularity)
// over W simulated workers, each its own agent with a memory and disk L1,
// sharing a fleet of in-process nodes on 127.0.0.x and an origin with
// injected latency; it reports the share of chunk reads each tier served.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	var (
		scenario = flag.String("scenario", "", "latency | shards | replay")
		nodes    = flag.String("nodes", "", "comma-separated fleet nodes (latency, shards)")
		chunks   = flag.Int("chunks", 2000, "chunks to fill (latency, shards)")
		seed     = flag.Uint64("seed", 1, "random seed")
		// latency
		stopPID = flag.Int("stop-pid", 0, "latency: pid of the node process to SIGSTOP (0: healthy only)")
		reads   = flag.Int("reads", 2000, "latency: fetches per measurement and concurrency")
		concs   = flag.String("conc", "1,8", "latency: concurrency levels")
		timeout = flag.Duration("timeout", 0, "latency: client Fetch timeout (0: the client default)")
		waiting = flag.Int("max-waiting", 0, "latency: client MaxWaiting, per-node cap on requests waiting for response headers (0: the client default)")
		linger  = flag.Duration("linger", 0, "latency: client Linger, how long requests Fetch no longer needs may finish in the background (0: the client default)")
		before  = flag.Bool("before", false, "latency: approximate the client before issue #5's fix: unneeded requests cancelled at once (Linger 1 ns), no cap on waiting requests")
		// shards
		www = flag.String("www", "", "shards: directory to copy the shards into")
		// replay
		rc replayConfig
	)
	rc.flags(flag.CommandLine)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch *scenario {
	case "latency":
		var cs []int
		if cs, err = ints(*concs); err == nil {
			err = runLatency(ctx, latencyConfig{
				Nodes: split(*nodes), Chunks: *chunks, Reads: *reads, Conc: cs,
				StopPID: *stopPID, Timeout: *timeout, Seed: *seed, Linger: *linger, MaxWaiting: *waiting, Before: *before,
			})
		}
	case "shards":
		err = runShards(ctx, split(*nodes), *chunks, *www, *seed)
	case "replay":
		rc.Seed = *seed
		err = runReplay(ctx, rc)
	default:
		err = fmt.Errorf("unknown -scenario %q: want latency, shards or replay", *scenario)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet bench:", err)
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range split(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("parsing %q: want positive integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}
