package cachefleet

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
)

// Origin leases: the fleet-side in-flight marker of issue #12. When the
// fleet has lost a chunk, every worker that misses it would read it from the
// origin. Instead a worker first asks the chunk's first placed node for a
// short lease (POST /v1/leases/{chunk}): the one that gets it (201) reads
// the origin and fills the fleet; the others (409) poll the fleet for the
// fill, for at most the lease's time, before reading the origin themselves.
// The origin then sees a chunk about once however many workers miss it
// (agent.Coordinate is the worker side). A lease ends when its time runs out
// or when any shard of the chunk is PUT on the node.

const (
	leasePrefix = "/v1/leases/"
	// minLease and maxLease bound the lease time a client may ask for.
	minLease, maxLease = 10 * time.Millisecond, 10 * time.Second
	// maxLeases bounds the table; past it, expired leases are dropped and,
	// if it is still full, leases are granted without being recorded (the
	// worker then reads the origin: fail open, never block a read).
	maxLeases = 1 << 16
)

// leases is a node's table of live origin leases.
type leases struct {
	mu  sync.Mutex
	m   map[chunk.Name]time.Time // expiry
	now func() time.Time
}

func newLeases() *leases { return &leases{m: make(map[chunk.Name]time.Time), now: time.Now} }

// take grants the lease on n for ttl unless a live one is held; it returns
// whether it was granted and, if not, how long the live one has left.
func (l *leases) take(n chunk.Name, ttl time.Duration) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if exp, ok := l.m[n]; ok && now.Before(exp) {
		return false, exp.Sub(now)
	}
	if len(l.m) >= maxLeases {
		for k, exp := range l.m {
			if !now.Before(exp) {
				delete(l.m, k)
			}
		}
		if len(l.m) >= maxLeases {
			return true, 0
		}
	}
	l.m[n] = now.Add(ttl)
	return true, 0
}

// release ends the lease on n (a shard of it arrived).
func (l *leases) release(n chunk.Name) {
	l.mu.Lock()
	delete(l.m, n)
	l.mu.Unlock()
}

// ParseLeaseRequest parses the path and query of a lease request,
// "/v1/leases/{chunk}" with an optional "ttl_ms=N" (clamped to
// 10 ms..10 s; default 1 s), strictly: one spelling of the chunk name, no
// other query parameter.
func ParseLeaseRequest(path, rawQuery string) (chunk.Name, time.Duration, error) {
	hexName, ok := strings.CutPrefix(path, leasePrefix)
	if !ok {
		return chunk.Name{}, 0, fmt.Errorf("path %q: not under %s", path, leasePrefix)
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
	return leasePrefix + n.String() + "?ttl_ms=" + strconv.FormatInt(ttl.Milliseconds(), 10)
}

// serveLease answers POST /v1/leases/{chunk}: 201 granted, 409 held (with
// the time left in Retry-After-Ms).
func (s *Server) serveLease(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.RawPath != "" {
		http.Error(w, "lease path must not be escaped", http.StatusBadRequest)
		return
	}
	n, ttl, err := ParseLeaseRequest(r.URL.Path, r.URL.RawQuery)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ok, left := s.leases.take(n, ttl)
	if !ok {
		s.m.leases.WithLabelValues("held").Inc()
		w.Header().Set("Retry-After-Ms", strconv.FormatInt(max(1, left.Milliseconds()), 10))
		w.WriteHeader(http.StatusConflict)
		return
	}
	s.m.leases.WithLabelValues("granted").Inc()
	w.WriteHeader(http.StatusCreated)
}
