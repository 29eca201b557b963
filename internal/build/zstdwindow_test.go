package build

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/lode-dev/lode/internal/chunk"
)

// TestZstdWindowSameFrames: the encoder's window fitted to the chunk size
// (zstdWindow) writes the same frames as the level's default window, so
// chunks built before it keep their names and deduplicate with chunks
// built after it. The inputs are chunks of text-like, repetitive, random
// and mixed bytes, at the default chunk size and a smaller one.
func TestZstdWindowSameFrames(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			fmt.Fprintf(&b, "def f%d(self): return %d  # lode chunk\n", r.IntN(500), r.IntN(1<<20))
		}
		return b.Bytes()[:n]
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	for _, cs := range []int{chunk.DefaultSize, 64 << 10} {
		inputs := map[string][]byte{
			"text":     text(cs),
			"zeros":    make([]byte, cs),
			"random":   random(cs),
			"mixed":    append(text(cs/2), random(cs-cs/2)...),
			"repeated": bytes.Repeat(text(4096), cs/4096),
			"short":    text(cs / 3),
		}
		def, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		fit, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(zstdWindow(cs)))
		if err != nil {
			t.Fatal(err)
		}
		for name, in := range inputs {
			a, b := def.EncodeAll(in, nil), fit.EncodeAll(in, nil)
			if !bytes.Equal(a, b) {
				t.Errorf("chunk size %d, %s: the fitted window (%d) writes %d bytes, the default window %d bytes: frames differ",
					cs, name, zstdWindow(cs), len(b), len(a))
			}
		}
		def.Close()
		fit.Close()
	}
	if w := zstdWindow(chunk.DefaultSize); w != chunk.DefaultSize {
		t.Errorf("zstdWindow(%d) = %d", chunk.DefaultSize, w)
	}
}
