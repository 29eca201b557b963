package agent

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

var _ blockdev.Device = (*Image)(nil)

const testRoot = store.RootID("r1")

// testImage is an image sealed chunk by chunk into an in-memory origin.
type testImage struct {
	m     *manifest.Manifest
	plain []byte
	st    *mem.Store
}

// buildImage makes an image of size bytes in chunks of chunkSize: random
// data, with the chunks listed in holes all zero.
func buildImage(t testing.TB, chunkSize int, size int64, holes []int, seed uint64) *testImage {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	plain := make([]byte, size)
	for i := range plain {
		plain[i] = byte(rng.Uint32())
	}
	for _, h := range holes {
		lo := int64(h) * int64(chunkSize)
		clear(plain[lo:min(lo+int64(chunkSize), size)])
	}
	secret := bytes.Repeat([]byte{7}, chunk.SecretSize)
	s, err := chunk.NewSealer(secret)
	if err != nil {
		t.Fatal(err)
	}
	st := mem.New()
	m := &manifest.Manifest{Root: string(testRoot), ChunkSize: chunkSize, ImageSize: size, FSType: "ext4"}
	err = chunk.Cut(context.Background(), bytes.NewReader(plain), size, chunkSize, func(i int, piece []byte, hole bool) error {
		if hole {
			m.Names = append(m.Names, chunk.Name{})
			m.Keys = append(m.Keys, chunk.Key{})
			return nil
		}
		ref, ct, err := s.Seal(piece, []byte(testRoot), nil)
		if err != nil {
			return err
		}
		m.Names = append(m.Names, ref.Name)
		m.Keys = append(m.Keys, ref.Key)
		return st.Put(context.Background(), store.ChunkKey(testRoot, ref.Name), ct)
	})
	if err != nil {
		t.Fatal(err)
	}
	return &testImage{m: m, plain: plain, st: st}
}

// countingTier wraps a Tier and counts Fetch calls per chunk name. If gate
// is not nil, every Fetch waits for it to be closed (or ctx to end).
type countingTier struct {
	Tier
	gate chan struct{}

	mu      sync.Mutex
	fetches map[chunk.Name]int
	fills   map[chunk.Name]int
}

func counting(t Tier) *countingTier {
	return &countingTier{Tier: t, fetches: map[chunk.Name]int{}, fills: map[chunk.Name]int{}}
}

func (c *countingTier) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	c.mu.Lock()
	c.fetches[n]++
	c.mu.Unlock()
	if c.gate != nil {
		select {
		case <-c.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return c.Tier.Fetch(ctx, n, dst)
}

func (c *countingTier) Fill(ctx context.Context, n chunk.Name, ct []byte) error {
	c.mu.Lock()
	c.fills[n]++
	c.mu.Unlock()
	return c.Tier.Fill(ctx, n, ct)
}

func (c *countingTier) count(n chunk.Name) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fetches[n]
}

func (c *countingTier) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := 0
	for _, v := range c.fetches {
		s += v
	}
	return s
}

// stallTier never answers: Fetch blocks until ctx ends. entered receives a
// value each time a Fetch starts, returned each time one gives up.
type stallTier struct {
	entered, returned chan error
}

func (s *stallTier) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	s.entered <- nil
	<-ctx.Done()
	s.returned <- ctx.Err()
	return nil, ctx.Err()
}
func (s *stallTier) Fill(context.Context, chunk.Name, []byte) error { return nil }
func (s *stallTier) Name() string                                   { return "origin" }

// syncBuffer is a test log or output written from several goroutines.
type syncBuffer = lodetest.SyncBuffer

// testLogger logs to t and, if buf is not nil, to buf.
func testLogger(t testing.TB, buf *syncBuffer) *slog.Logger {
	var w = &tWriter{t: t, buf: buf}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t   testing.TB
	buf *syncBuffer
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	if w.buf != nil {
		w.buf.Write(p)
	}
	return len(p), nil
}

// quiesce waits for the image's read-ahead and the agent's fetches and
// write-backs (no reads may run meanwhile).
func (im *Image) quiesce() {
	im.wg.Wait()
	im.a.idle()
}
