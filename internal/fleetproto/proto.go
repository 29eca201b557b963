// Package fleetproto is the wire protocol between the fleet client
// (internal/cachefleet) and a cache node (internal/cachenode): the shard
// format (shard.go), the API paths, the headers and what each status means
// (this file). Both sides import it; neither owns it, which is why it is a
// package of its own rather than a file of either side.
//
// The API of a node:
//
//	GET  /v1/shards/{chunk}      all of the chunk's shards the node holds,
//	                             concatenated (SplitShards cuts them):
//	                             200, or 404 when it holds none
//	GET  /v1/shards/{chunk}/{i}  one shard: 200, or 404
//	PUT  /v1/shards/{chunk}/{i}  store one shard (ContentType body): 204;
//	                             400 when the body is not shard i of chunk,
//	                             413 when it exceeds MaxShardSize
//	POST /v1/leases/{chunk}?ttl_ms=N  an origin lease (see LeasePath):
//	                             StatusLeaseGranted, or StatusLeaseHeld with
//	                             the time left in HeaderRetryAfterMs
//	GET  /metrics, /healthz      Prometheus metrics, liveness
//
// Chunk names are 64 lower-case hex digits, with one spelling only.
// Everything here is pure: no I/O.
package fleetproto

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
)

// DefaultPort is the node port: a node listens on it unless told otherwise,
// and the client assumes it when a node entry names none.
const DefaultPort = 7431

// Headers and status meanings.
const (
	// ContentType is the media type of shard bodies (GET answers, PUTs).
	ContentType = "application/octet-stream"
	// HeaderRetryAfterMs, on a held lease, is the milliseconds the live
	// lease has left.
	HeaderRetryAfterMs = "Retry-After-Ms"
	// StatusLeaseGranted: the caller holds the lease; it reads the origin
	// and fills the fleet.
	StatusLeaseGranted = http.StatusCreated
	// StatusLeaseHeld: another worker holds the lease; the caller polls the
	// fleet for the fill, for at most the time left, before reading the
	// origin itself.
	StatusLeaseHeld = http.StatusConflict
)

// ShardPrefix and LeasePrefix start the shard and lease API paths.
const ShardPrefix = "/v1/shards/"

// ParseShardPath parses "/v1/shards/{chunk}/{index}" or, with index -1,
// "/v1/shards/{chunk}", strictly.
func ParseShardPath(p string) (chunk.Name, int, error) {
	rest, ok := strings.CutPrefix(p, ShardPrefix)
	if !ok {
		return chunk.Name{}, 0, fmt.Errorf("path %q: not under %s", p, ShardPrefix)
	}
	hexName, idx, hasIdx := strings.Cut(rest, "/")
	n, err := chunk.ParseName(hexName)
	if err != nil {
		return chunk.Name{}, 0, fmt.Errorf("path %q: %w", p, err)
	}
	if n.String() != hexName {
		return chunk.Name{}, 0, fmt.Errorf("path %q: chunk name must be lower-case hex", p)
	}
	if !hasIdx {
		return n, -1, nil
	}
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || i >= MaxShards || strconv.Itoa(i) != idx {
		return chunk.Name{}, 0, fmt.Errorf("path %q: shard index must be 0..%d", p, MaxShards-1)
	}
	return n, i, nil
}

// ShardPath is the API path of shard i of chunk n; i < 0 names all of
// chunk n's shards on the node.
func ShardPath(n chunk.Name, i int) string {
	if i < 0 {
		return ShardPrefix + n.String()
	}
	return ShardPrefix + n.String() + "/" + strconv.Itoa(i)
}

const (
	LeasePrefix = "/v1/leases/"
	// minLease and maxLease bound the lease time a client may ask for.
	minLease, maxLease = 10 * time.Millisecond, 10 * time.Second
)

// ParseLeaseRequest parses the path and query of a lease request,
// "/v1/leases/{chunk}" with an optional "ttl_ms=N" (clamped to
// 10 ms..10 s; default 1 s), strictly: one spelling of the chunk name, no
// other query parameter.
func ParseLeaseRequest(path, rawQuery string) (chunk.Name, time.Duration, error) {
	hexName, ok := strings.CutPrefix(path, LeasePrefix)
	if !ok {
		return chunk.Name{}, 0, fmt.Errorf("path %q: not under %s", path, LeasePrefix)
	}
	n, err := chunk.ParseName(hexName)
	if err != nil || n.String() != hexName {
		return chunk.Name{}, 0, fmt.Errorf("path %q: chunk name must be 64 lower-case hex digits", path)
	}
	ttl := time.Second
	if rawQuery != "" {
		v, ok := strings.CutPrefix(rawQuery, "ttl_ms=")
		ms, err := strconv.Atoi(v)
		if !ok || err != nil || ms < 0 || strconv.Itoa(ms) != v {
			return chunk.Name{}, 0, fmt.Errorf("query %q: want ttl_ms=N", rawQuery)
		}
		ttl = time.Duration(ms) * time.Millisecond
	}
	return n, min(max(ttl, minLease), maxLease), nil
}

// LeasePath is the API path and query of a lease of chunk n for ttl.
func LeasePath(n chunk.Name, ttl time.Duration) string {
	return LeasePrefix + n.String() + "?ttl_ms=" + strconv.FormatInt(ttl.Milliseconds(), 10)
}
