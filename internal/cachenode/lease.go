package cachenode

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
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
	n, ttl, err := fleetproto.ParseLeaseRequest(r.URL.Path, r.URL.RawQuery)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ok, left := s.leases.take(n, ttl)
	if !ok {
		s.m.leases.WithLabelValues("held").Inc()
		w.Header().Set(fleetproto.HeaderRetryAfterMs, strconv.FormatInt(max(1, left.Milliseconds()), 10))
		w.WriteHeader(fleetproto.StatusLeaseHeld)
		return
	}
	s.m.leases.WithLabelValues("granted").Inc()
	w.WriteHeader(fleetproto.StatusLeaseGranted)
}
