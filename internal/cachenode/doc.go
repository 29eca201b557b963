// Package cachenode is a cache node of the fleet (DESIGN.md "Tiers", L2):
// the server that `lode cache` runs and internal/cachefleet's client reads
// from and fills. The wire protocol both sides speak (shard format, paths,
// headers, status meanings) is internal/fleetproto.
//
// It owns:
//   - the HTTP API (server.go): shard GET/PUT, /metrics, /healthz;
//   - the node store (nodestore.go): a byte-budgeted store of shards, memory
//     first then disk, with scan-resistant eviction; disk-only shards are
//     sent from their files (sendfile) and come back into memory only on a
//     second hit;
//   - the server half of origin leases (lease.go: the lease table and
//     POST /v1/leases; agent.Coordinate and cachefleet.Client.Lease are the
//     worker half);
//   - the shard fast path (fastpath.go, fastparse.go), below;
//   - StartLocal (local.go): in-process nodes for lode demo.
//
// It does not own: placement, erasure coding or verification (the client
// does them; a node checks shard headers and lengths only and never sees
// plaintext), or the origin.
//
// Libraries: net/http for the protocol, except the shard GETs and PUTs. The
// node store is hand-written: a cache keyed by (chunk, shard) with a byte
// budget and disk demotion has no good off-the-shelf fit among our
// dependencies.
//
// The shard fast path (fastpath.go, fastparse.go) is a hand-written HTTP/1.1
// keep-alive server for exactly GET /v1/shards/{chunk}[/{i}] and PUT
// /v1/shards/{chunk}/{i} with a Content-Length body, on the node's listener
// in front of net/http. It exists because a node serving through net/http
// reached only 0.61–0.69× nginx's throughput with disk-demoted shards and
// 0.70–0.83× with shards in memory at 16–64 connections on the 2-core
// benchmark machine (issue #5 asks ≥ 0.8×; docs/fleet.md, "One node vs
// nginx"): per disk hit net/http cost open, fstat, pread and close of the
// shard file and two writes (the head and net/http's 512-byte pre-copy)
// before the sendfile, and per request header maps, bufio, a background read
// and metric label lookups. The fast path answers a memory hit with two
// writes (head and first 4 KiB, then the rest) and a disk hit with the head
// (MSG_MORE) and one sendfile from a cached descriptor, parsing requests in
// place. In the same interleaved run (docs/fleet.md) the node went from
// 0.78× / 0.79× to 0.96× / 0.93× nginx at 16 / 64 connections with shards in
// memory, and from 0.67× / 0.63× to 0.88× / 0.90× with shards on disk, using
// 19–48% less CPU per request. What is left is mostly the kernel copying
// memory-resident shards into the socket, which nginx's sendfile from the page
// cache does not do.
//
// It parses untrusted input, so it is deliberately narrow: a request it does
// not fully understand (another method or path, HEAD, /metrics, /healthz,
// chunked or oversized bodies, Expect, Upgrade, an unusual Connection value,
// malformed or bare-LF lines, a head over 4 KiB) is not answered with an
// error but handed, with the connection and every byte read so far, to
// net/http, which serves that request and the rest of the connection. What it
// accepts, net/http reads as the same request (FuzzParseFastRequest checks
// this differentially against http.ReadRequest), and it answers with
// net/http's status, headers and body (TestFastPathMatchesNetHTTP).
// Pipelined requests are answered in order; idle connections close after 2
// minutes and a request head must complete within 10 s, as with net/http.
package cachenode
