// Package tiertest is the conformance suite of agent.Tier (tier.go's
// contract) and the tier fakes tests share. Every tier and decorator runs
// Run: the disk cache, the fleet client, the origin (one root and
// agent.Origins), Limit, RateLimit, Retry and Coordinate.
//
// It owns no production behaviour and is imported only from _test.go files.
package tiertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// Subject is a tier under test and how to give it a chunk.
type Subject struct {
	Tier agent.Tier
	// Seed makes ciphertext ct of chunk n available from Tier: through its
	// source (the origin's store) or, for a cache, its Fill.
	Seed func(t *testing.T, n chunk.Name, ct []byte)
	// Caches: Fill makes a chunk fetchable (disk, fleet); false for the
	// origin, whose Fill is a no-op.
	Caches bool
}

// Chunk returns deterministic ciphertext-like bytes of size n named by
// their SHA-256.
func Chunk(seed byte, size int) ([]byte, chunk.Name) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*31) ^ seed
	}
	return b, chunk.Name(sha256.Sum256(b))
}

// Run checks the Tier contract on subjects made by newSubject (one per
// subtest): a seeded chunk comes back byte for byte, appended into dst when
// it has room; a missing one is store.ErrNotFound; Fill does not retain its
// buffer (and, for caches, makes the chunk fetchable); a cancelled context
// fails or answers, never hangs; Name is a constant label; concurrent
// Fetches agree.
func Run(t *testing.T, newSubject func(t *testing.T) Subject) {
	ctx := context.Background()
	t.Run("FetchSeeded", func(t *testing.T) {
		s := newSubject(t)
		ct, n := Chunk(1, 70000)
		s.Seed(t, n, ct)
		got, err := s.Tier.Fetch(ctx, n, nil)
		if err != nil || !bytes.Equal(got, ct) {
			t.Fatalf("Fetch = %d bytes, %v; want the %d seeded", len(got), err, len(ct))
		}
		dst := make([]byte, 0, 80000)
		got, err = s.Tier.Fetch(ctx, n, dst)
		if err != nil || !bytes.Equal(got, ct) || &got[0] != &dst[:1][0] {
			t.Errorf("Fetch into a large enough dst = %d bytes, %v, reused %v; want dst reused", len(got), err, err == nil && &got[0] == &dst[:1][0])
		}
		small := make([]byte, 10)
		if got, err = s.Tier.Fetch(ctx, n, small[:0]); err != nil || !bytes.Equal(got, ct) {
			t.Errorf("Fetch into a small dst = %d bytes, %v", len(got), err)
		}
	})
	t.Run("FetchMissing", func(t *testing.T) {
		s := newSubject(t)
		_, n := Chunk(2, 100)
		if _, err := s.Tier.Fetch(ctx, n, nil); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Fetch of a chunk never seeded = %v, want store.ErrNotFound", err)
		}
	})
	t.Run("FillDoesNotRetain", func(t *testing.T) {
		s := newSubject(t)
		ct, n := Chunk(3, 5000)
		buf := bytes.Clone(ct)
		if err := s.Tier.Fill(ctx, n, buf); err != nil && s.Caches {
			t.Fatalf("Fill = %v", err)
		}
		clear(buf)
		got, err := s.Tier.Fetch(ctx, n, nil)
		switch {
		case s.Caches && (err != nil || !bytes.Equal(got, ct)):
			t.Errorf("Fetch after Fill = %d bytes, %v; want the filled chunk, unchanged by the caller's buffer", len(got), err)
		case !s.Caches && !errors.Is(err, store.ErrNotFound):
			t.Errorf("Fetch after Fill of a tier that does not cache = %v, want store.ErrNotFound", err)
		}
	})
	t.Run("Cancelled", func(t *testing.T) {
		s := newSubject(t)
		ct, n := Chunk(4, 3000)
		s.Seed(t, n, ct)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		got, err := s.Tier.Fetch(cctx, n, nil)
		if err == nil && !bytes.Equal(got, ct) {
			t.Errorf("Fetch with a cancelled context returned wrong bytes")
		}
	})
	t.Run("Name", func(t *testing.T) {
		s := newSubject(t)
		if a, b := s.Tier.Name(), s.Tier.Name(); a == "" || a != b {
			t.Errorf("Name() = %q then %q, want one non-empty label", a, b)
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		s := newSubject(t)
		var cts [][]byte
		var ns []chunk.Name
		for i := range 4 {
			ct, n := Chunk(byte(10+i), 20000+i)
			s.Seed(t, n, ct)
			cts, ns = append(cts, ct), append(ns, n)
		}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 8 {
					k := (g + i) % len(ns)
					got, err := s.Tier.Fetch(ctx, ns[k], nil)
					if err != nil || !bytes.Equal(got, cts[k]) {
						t.Errorf("concurrent Fetch of chunk %d = %d bytes, %v", k, len(got), err)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
}

// Map is an in-memory Tier: a cache that keeps what it is filled with. It
// counts Fetches per chunk. Label names it (default "map").
type Map struct {
	Label string
	mu    sync.Mutex
	m     map[chunk.Name][]byte
	calls map[chunk.Name]int
}

// NewMap returns an empty Map labelled label.
func NewMap(label string) *Map {
	return &Map{Label: label, m: map[chunk.Name][]byte{}, calls: map[chunk.Name]int{}}
}

func (m *Map) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls[n]++
	b, ok := m.m[n]
	if !ok {
		return nil, fmt.Errorf("chunk %s in %s: %w", n, m.Name(), store.ErrNotFound)
	}
	return append(dst[:0], b...), nil
}

func (m *Map) Fill(_ context.Context, n chunk.Name, ct []byte) error {
	m.mu.Lock()
	m.m[n] = bytes.Clone(ct)
	m.mu.Unlock()
	return nil
}

func (m *Map) Name() string {
	if m.Label == "" {
		return "map"
	}
	return m.Label
}

// Calls returns how many Fetches asked for n.
func (m *Map) Calls(n chunk.Name) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[n]
}

// Err is a Tier whose Fetch always fails with E; Fleet declares it the fleet
// (agent.FleetRole).
type Err struct {
	Label string
	E     error
	Fleet bool
}

func (e Err) Fetch(context.Context, chunk.Name, []byte) ([]byte, error) { return nil, e.E }
func (e Err) Fill(context.Context, chunk.Name, []byte) error            { return nil }
func (e Err) Name() string                                              { return e.Label }
func (e Err) IsFleet() bool                                             { return e.Fleet }

var (
	_ agent.Tier = (*Map)(nil)
	_ agent.Tier = Err{}
)
