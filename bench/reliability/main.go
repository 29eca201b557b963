// Command reliability measures lode under faults and over time (issue #7,
// docs/reliability.md). bench/reliability.sh runs it; each scenario can also
// be run alone:
//
//	go run ./bench/reliability -scenario=faults  -duration=60s -readers=16
//	go run ./bench/reliability -scenario=soak    -duration=3m
//	go run ./bench/reliability -scenario=entries -entries=2000001
//
// faults: concurrent readers of two images through one agent whose tiers are
// a disk cache on a small tmpfs (the L1 disk fills), a client of five
// in-process cache nodes and the origin behind a fault-injecting store, while
// a schedule kills and restarts nodes, makes the origin fail 5% of reads,
// stalls it for 10 s, and closes and reopens the agent. Every read must
// return the image's exact bytes or fail within the fetch deadline; the
// store must be intact afterwards. It exits 1 otherwise.
//
// soak: reads through one agent (64 MiB memory cache, 256 MiB disk budget)
// and PUT/GET load on a cache node process with a 128 MiB memory budget,
// sampling the peak RSS of both against their budgets.
//
// entries: flattens a rootfs tar of that many entries (headers only,
// gzipped) with the default FlattenOptions and reports time, outcome and
// peak RSS: the cost of the "millions of entries" image at the default
// MaxEntries.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	var (
		scenario = flag.String("scenario", "", "faults | soak | entries | node (internal: a cache node process for soak)")
		duration = flag.Duration("duration", 60*time.Second, "how long to run (faults, soak)")
		readers  = flag.Int("readers", 16, "concurrent readers (faults, soak)")
		seed     = flag.Uint64("seed", 1, "random seed")
		entries  = flag.Int("entries", 2_000_001, "tar entries (entries)")
		listen   = flag.String("listen", "127.0.0.1:0", "address (node)")
		memBytes = flag.Int64("mem", 128<<20, "memory budget of the node (node, soak)")
		dir      = flag.String("dir", "", "the soak's world (agentload)")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch *scenario {
	case "faults":
		err = runFaults(ctx, *duration, *readers, *seed)
	case "soak":
		err = runSoak(ctx, *duration, *readers, *seed, *memBytes)
	case "entries":
		err = runEntries(ctx, *entries)
	case "agentload":
		err = runAgentLoad(ctx, *dir, *duration, *readers, *seed)
	case "node":
		err = runNode(ctx, *listen, *memBytes)
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		os.Exit(1)
	}
}
