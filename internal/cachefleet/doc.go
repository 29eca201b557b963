// Package cachefleet is the client of the shared, erasure-coded chunk cache
// (DESIGN.md "Tiers", L2): the "fleet" tier the agent reads through. The
// nodes are internal/cachenode; the wire protocol both sides speak (shard
// format, paths, headers, status meanings) is internal/fleetproto.
//
// It owns:
//   - placement (placement.go): rendezvous hashing from a chunk name to K
//     nodes, pure and deterministic;
//   - the Reed–Solomon coding (codec.go): a chunk's ciphertext is cut into M
//     data and K−M parity shards in fleetproto's shard format, and rebuilt
//     from any M;
//   - the client (client.go): membership from a node list and DNS names,
//     M-of-K reads that rebuild from the first M valid replies and verify the
//     rebuilt chunk against its name (requests no longer needed are drained
//     in the background, keeping connections; a stalled node is skipped),
//     write-back (Fill), and the worker half of origin leases (Lease).
//
// It does not own: the node (internal/cachenode), the origin (the agent
// fetches from the origin on a fleet miss and calls Fill), decryption (nodes
// and client see ciphertext only), or the worker cache.
//
// Libraries: github.com/klauspost/reedsolomon for the erasure code; net/http
// for the protocol. Placement is hand-written: rendezvous hashing is a few
// lines, and it must never change (TestPlaceGolden).
package cachefleet
