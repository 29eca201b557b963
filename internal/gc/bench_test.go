package gc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store/file"
)

// BenchmarkPass_50Images measures one pass that rotates and copies forward
// a file store of 50 images of 32 MiB in 512 KiB chunks that share a 24 MiB
// base (8 MiB unique each), with 5 of them deleted. With -short the images
// are 2 MiB (1.5 MiB base) so CI's -benchtime=1x stays quick. Reported:
// objects and bytes copied per pass, and MB/s of bytes copied.
func BenchmarkPass_50Images(b *testing.B) {
	const images, deleted = 50, 5
	imageMiB, baseMiB := 32, 24
	if testing.Short() {
		imageMiB, baseMiB = 2, 1
	}
	chunks, baseChunks := imageMiB*2, baseMiB*2
	ctx := context.Background()
	var rep Report
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st, err := file.New(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		w := newWorld(b, st)
		w.chunkSize, w.forget = chunk.DefaultSize, true
		rng := rand.New(rand.NewPCG(1, 2))
		base := make([][]byte, baseChunks)
		for j := range base {
			base[j] = randBlock(rng, w.chunkSize)
		}
		for img := 0; img < images; img++ {
			blocks := append([][]byte(nil), base...)
			for len(blocks) < chunks {
				blocks = append(blocks, randBlock(rng, w.chunkSize))
			}
			w.buildNow("acme", fmt.Sprintf("img%02d", img), blocks)
		}
		for img := 0; img < deleted; img++ {
			if err := deleteImage(ctx, st, "acme", fmt.Sprintf("img%02d", img)); err != nil {
				b.Fatal(err)
			}
		}
		cfg := DefaultConfig()
		cfg.Now = func() time.Time { return w.now.Add(8 * 24 * time.Hour) } // rotation due
		c := NewCollector(st, cfg)
		b.StartTimer()
		start := time.Now()
		rep, err = c.Pass(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/pass")
	}
	b.SetBytes(rep.BytesCopied)
	b.ReportMetric(float64(rep.ObjectsCopied), "objects/pass")
	b.ReportMetric(float64(rep.BytesCopied)/(1<<20), "MiB-copied/pass")
	b.ReportMetric(float64(rep.ImagesCopied), "images/pass")
}

func randBlock(rng *rand.Rand, n int) []byte {
	p := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			p[i+k] = byte(v >> (8 * k))
		}
	}
	return p
}
