package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/store/storeurl"
	"github.com/lode-dev/lode/internal/worker"
)

// bindWorker binds the worker flags (the tier stack, internal/worker) to o.
func bindWorker(f *pflag.FlagSet, o *worker.Options) {
	f.StringVar(&o.CacheDir, "cache-dir", "", "L1 disk cache of ciphertext chunks, shared by every image on this worker (default $LODE_HOME/cache)")
	f.Int64Var(&o.DiskBytes, "cache-size", 8<<30, "L1 disk cache budget in bytes (0 disables the disk cache)")
	f.Int64Var(&o.MemBytes, "mem-cache-size", 512<<20, "L1 memory cache budget in bytes of plaintext")
	f.DurationVar(&o.FetchTimeout, "fetch-timeout", 30*time.Second, "deadline for fetching one chunk across all tiers; reads fail with EIO after it")
	f.IntVar(&o.ReadAhead, "read-ahead", 4, "chunks to prefetch after sequential reads (0 disables)")
	f.IntVar(&o.Fetches, "max-fetches", 32, "concurrent chunk fetches from the tiers")
	f.IntVar(&o.OriginConcurrency, "origin-concurrency", 32, "concurrent requests to the origin from this worker (0: unbounded); the outermost origin limit: Limit(Retry(RateLimit(origin)))")
	f.IntVar(&o.OriginAttempts, "origin-attempts", 3, "tries per chunk fetch from the origin when it fails with a transient error (1: no retry); retries hold the --origin-concurrency slot")
	f.Float64Var(&o.OriginRate, "origin-rate", 0, "origin requests per second from this worker, token bucket (0: unlimited); protects the origin when the fleet is empty. Every attempt takes a token, inside the --origin-concurrency slot: Limit(Retry(RateLimit(origin)))")
	f.IntVar(&o.OriginBurst, "origin-burst", 64, "burst of the --origin-rate token bucket")
	f.IntVar(&o.FleetConcurrency, "fleet-concurrency", 0, "concurrent chunk reads from the fleet (0: unbounded)")
	f.DurationVar(&o.OriginLease, "origin-lease", 250*time.Millisecond, "with --fleet: before reading a chunk from the origin, take its lease from the fleet; if another worker holds it, wait up to this for its fill instead (0: off)")
	f.StringSliceVar(&o.Fleet, "fleet", nil, "cache fleet nodes (host:port, or DNS names resolving to several nodes), comma-separated")
	f.IntVar(&o.FleetM, "fleet-data-shards", 4, "Reed–Solomon data shards (M): a chunk is rebuilt from any M replies")
	f.IntVar(&o.FleetK, "fleet-shards", 5, "total shards per chunk (K = M data + parity), one per node")
	f.StringVar(&o.FleetTLS.Cert, "fleet-tls-cert", "", "this worker's certificate for mutual TLS with the fleet (`lode cache certs --worker NAME`)")
	f.StringVar(&o.FleetTLS.Key, "fleet-tls-key", "", "the --fleet-tls-cert key")
	f.StringVar(&o.FleetTLS.CA, "fleet-tls-ca", "", "the fleet CA that nodes' certificates must chain to")
	f.StringVar(&o.Trace, "trace", os.Getenv("LODE_TRACE"), "write a fetch trace to this file: a JSON line per chunk fetch and per read (default $LODE_TRACE; analyse it with go run ./bench/serial FILE)")
	f.BoolVar(&o.LearnProfile, "learn-profile", true, "record what each start of an image reads and publish it through the store as the image's learned startup profile, which later cold starts on every worker prefetch (false: only use profiles, never record)")
	f.BoolVar(&o.AllowStoreSecret, "allow-store-secret", false, "run although the keyring holds the store secret (a builder's keyring); give workers one from `lode keys export`")
}

// bindFill binds the background fill flags to o.
func bindFill(f *pflag.FlagSet, o *worker.FillOptions) {
	f.BoolVar(&o.On, "fill", false, "after the start-up burst, fetch the rest of the image in the background (into the disk cache)")
	f.DurationVar(&o.After, "fill-after", 2*time.Second, "quiet period before the background fill starts: no read for this long (lode run also starts it at the first exec)")
	f.StringVar(&o.Rate, "fill-rate", "", "background fill rate in bytes per second, e.g. 50M or 52428800 (default unlimited: bounded by --fill-parallel)")
	f.IntVar(&o.Parallel, "fill-parallel", 2, "background fill fetches in flight")
}

// workerDefaults fills in what the flags default from --home.
func workerDefaults(o worker.Options) worker.Options {
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(global.home, "cache")
	}
	return o
}

// openImage opens the tenant's image name on a stack of its own.
func openImage(ctx context.Context, o worker.Options, name string, reg prometheus.Registerer) (*worker.Image, error) {
	st, err := openStoreWith(ctx, storeurl.OpenLazy) // the bucket check beside the manifest's GET, not before it
	if err != nil {
		return nil, err
	}
	kr, err := openKeyring()
	if err != nil {
		return nil, err
	}
	return worker.Open(ctx, st, kr, global.tenant, name, workerDefaults(o), reg, logger)
}
