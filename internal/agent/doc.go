// Package agent owns the worker's chunk reader: it turns a read of an
// image's block device (offset, length) into chunk reads and serves each one
// from the tiers, fastest first — the L1 memory cache of plaintext, the L1
// disk cache of ciphertext, then the next tier (the origin store today; the
// cache fleet plugs in as another Tier) — verifying and decrypting every chunk
// before any byte is returned.
//
// It implements DESIGN.md "The data path, end to end" (the chunk reader box)
// and "Tiers" (L1). It owns: the Tier interface (defined here by its consumer;
// cachefleet.Client satisfies it without importing agent), the origin adapter
// over a store.Store, the shared memory and disk caches, one fetch per chunk
// however many readers miss it at once, the bound on concurrent fetches,
// the multi-root origin of a daemon serving images from several roots
// (Origins),
// sequential read-ahead, per-tier Prometheus metrics and per-image statistics.
//
// It does not own: the manifest codec (callers pass an opened
// *manifest.Manifest), object keys and backends (internal/store), chunk
// sealing (internal/chunk), the frontends that export an Image as a block
// device (internal/blockdev/...), or the cache fleet (internal/cachefleet).
//
// Beyond the read path it owns: start-profile prefetch (Image.Prefetch of a
// manifest's hints), background fill of the rest of an image at a bounded
// rate (fill.go), the per-image "lazy loading degraded" signal
// (degraded.go), zstd decoding of compressed chunks (zstd.go), and the tier
// decorators that protect the origin and gate starts: Limit, RateLimit,
// Retry and Admission (limit.go), Coordinate over the fleet's origin leases
// (lease.go), and the start class of Image.SetStarting, which keeps a
// quarter of the fetch slots for running containers (issue #12). A tier that
// hashes chunks itself (NameVerifier, the fleet client) spares the agent the
// second SHA-256 (tier.go).
//
// Manifests are tenant input even when they open with a valid key: every
// length is checked before plaintext is sliced, and each read and each fetch
// runs inside a recover boundary that fails only that read (ErrPanic,
// lode_agent_read_panics_total; recover.go), so one image cannot stop a
// worker serving others (issue #19).
//
// Hand-written on the standard library: the per-chunk single flight needs
// reference-counted cancellation (a fetch stops only when every waiter has
// gone, and one waiter leaving never cancels it for the others), which
// golang.org/x/sync/singleflight does not offer; the LRUs are container/list
// over a map; the semaphores are buffered channels (read-ahead needs a
// non-blocking try).
package agent
