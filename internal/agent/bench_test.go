package agent

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/trace"
)

// benchImage is 32 chunks of the default 512 KiB, no holes.
func benchImage(b *testing.B) *testImage {
	return buildImage(b, chunk.DefaultSize, 32*chunk.DefaultSize, nil, 9)
}

func warmImage(b *testing.B, ti *testImage) *Image {
	b.Helper()
	im, err := NewImage("bench/app", ti.m, Config{Mem: NewMemCache(1 << 30), Tiers: []Tier{NewOrigin(ti.st, testRoot)}, ReadAhead: 4})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { im.Close() })
	all := make([]byte, ti.m.ImageSize)
	if _, err := im.ReadAt(context.Background(), all, 0); err != nil {
		b.Fatal(err)
	}
	return im
}

func BenchmarkReadAt_Warm4K(b *testing.B) {
	ti := benchImage(b)
	im := warmImage(b, ti)
	ctx := context.Background()
	blocks := ti.m.ImageSize / 4096
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(1, 2))
		p := make([]byte, 4096)
		for pb.Next() {
			if _, err := im.ReadAt(ctx, p, rng.Int64N(blocks)*4096); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkReadAt_Seq128K(b *testing.B) {
	ti := benchImage(b)
	im := warmImage(b, ti)
	ctx := context.Background()
	p := make([]byte, 128<<10)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	off := int64(0)
	for b.Loop() {
		if _, err := im.ReadAt(ctx, p, off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(p))) % ti.m.ImageSize
	}
}

// BenchmarkReadAt_ColdChunk reads whole 512 KiB chunks that are on the disk
// tier only (no memory cache): file read, verify, decrypt.
func BenchmarkReadAt_ColdChunk(b *testing.B) { coldChunkBench(b, nil) }

// BenchmarkReadAt_ColdChunkTraced is BenchmarkReadAt_ColdChunk with the
// fetch trace on (written to io.Discard): its cost per fetch and read.
func BenchmarkReadAt_ColdChunkTraced(b *testing.B) { coldChunkBench(b, trace.New(io.Discard)) }

func coldChunkBench(b *testing.B, tr *trace.Recorder) {
	ti := benchImage(b)
	d, err := NewDiskCache(b.TempDir(), 1<<30, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i, n := range ti.m.Names {
		if err := d.Fill(context.Background(), n, mustGetB(b, ti, i)); err != nil {
			b.Fatal(err)
		}
	}
	im, err := NewImage("bench/app", ti.m, Config{Tiers: []Tier{d}, Trace: tr})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { im.Close() })
	ctx := context.Background()
	p := make([]byte, chunk.DefaultSize)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := im.ReadAt(ctx, p, int64(i)*chunk.DefaultSize); err != nil {
			b.Fatal(err)
		}
		i = (i + 1) % len(ti.m.Names)
	}
	if got := im.Stats().Tiers[0].Hits; got == 0 {
		b.Fatalf("disk hits = 0")
	}
}

func mustGetB(b *testing.B, ti *testImage, i int) []byte {
	b.Helper()
	ct, err := ti.st.Get(context.Background(), "roots/"+string(testRoot)+"/chunks/"+ti.m.Names[i].String(), nil)
	if err != nil {
		b.Fatal(err)
	}
	return ct
}

// FuzzReadAt checks any (offset, length) read against the plaintext.
func FuzzReadAt(f *testing.F) {
	ti := buildImage(f, 4096, 7*4096+123, []int{1, 4}, 3)
	im, err := NewImage("fuzz/app", ti.m, Config{Mem: NewMemCache(3 * 4096), Tiers: []Tier{NewOrigin(ti.st, testRoot)}, ReadAhead: 2})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { im.Close() })
	for _, s := range [][2]int64{{0, 1}, {4095, 2}, {0, 7*4096 + 123}, {7 * 4096, 200}, {-1, 1}, {1 << 40, 1}} {
		f.Add(s[0], int(s[1]))
	}
	size := ti.m.ImageSize
	f.Fuzz(func(t *testing.T, off int64, n int) {
		if n < 0 || n > 1<<20 {
			return
		}
		p := make([]byte, n)
		got, err := im.ReadAt(context.Background(), p, off)
		switch {
		case off < 0:
			if err == nil {
				t.Fatalf("ReadAt(off %d) succeeded", off)
			}
		case n == 0:
			if got != 0 || err != nil {
				t.Fatalf("ReadAt(len 0, off %d) = %d, %v", off, got, err)
			}
		default:
			want := int(max(0, min(int64(n), size-off)))
			if got != want || (want < n) != (err == io.EOF) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(len %d, off %d) = %d, %v; want %d", n, off, got, err, want)
			}
			if got > 0 && !bytes.Equal(p[:got], ti.plain[off:off+int64(got)]) {
				t.Fatalf("ReadAt(len %d, off %d): wrong bytes", n, off)
			}
		}
	})
}
