// Package cachefleet is the shared, erasure-coded chunk cache (DESIGN.md
// "Tiers", L2): the cache node server and the client the agent uses as its
// "fleet" tier.
//
// It owns:
//   - placement (placement.go): rendezvous hashing from a chunk name to K
//     nodes, pure and deterministic;
//   - the shard format and Reed–Solomon coding (shard.go): a chunk's
//     ciphertext is cut into M data and K−M parity shards, each with a small
//     header (magic, version, M, K, index, chunk length, chunk name);
//   - the node (server.go, nodestore.go): an HTTP API over a byte-budgeted
//     store of shards, memory first then disk, with scan-resistant eviction;
//     disk-only shards are sent from their files (sendfile) and come back
//     into memory only on a second hit;
//   - the client (client.go): membership from a node list and DNS names,
//     M-of-K reads that rebuild from the first M valid replies and verify the
//     rebuilt chunk against its name (requests no longer needed are drained
//     in the background, keeping connections; a stalled node is skipped),
//     and write-back (Fill).
//
// It does not own: the origin (the agent fetches from the origin on a fleet
// miss and calls Fill), decryption (nodes and client see ciphertext only), or
// the worker cache.
//
// Libraries: github.com/klauspost/reedsolomon for the erasure code; net/http
// for the protocol (measured against nginx in docs/fleet.md). The node store
// and placement are hand-written: both are small, and a cache keyed by
// (chunk, shard) with a byte budget and disk demotion has no good off-the-shelf
// fit among our dependencies.
package cachefleet
