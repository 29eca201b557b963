package cachefleet

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
)

func randomChunk(r *rand.Rand, size int) ([]byte, chunk.Name) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b, chunk.NameOf(b)
}

// TestCodecRoundTrip encodes chunks of varied sizes and rebuilds them from
// every M-subset of shards (each shard left out in turn).
func TestCodecRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	codes := []struct{ m, k int }{{4, 5}, {1, 1}, {1, 3}, {3, 5}, {4, 4}}
	sizes := []int{1, 3, 4, 5, 4096, 4097, 1000003, chunk.DefaultSize}
	for _, code := range codes {
		cd, err := newCodec(code.m, code.k)
		if err != nil {
			t.Fatalf("newCodec(%d, %d): %v", code.m, code.k, err)
		}
		for _, size := range sizes {
			t.Run(fmt.Sprintf("%dof%d/%d", code.m, code.k, size), func(t *testing.T) {
				data, n := randomChunk(r, size)
				shards, err := cd.encode(n, data)
				if err != nil {
					t.Fatalf("encode: %v", err)
				}
				if len(shards) != code.k {
					t.Fatalf("encode gave %d shards, want %d", len(shards), code.k)
				}
				hdrs := make([]fleetproto.ShardHeader, code.k)
				payloads := make([][]byte, code.k)
				for i, s := range shards {
					h, p, err := fleetproto.ParseShard(s)
					if err != nil {
						t.Fatalf("fleetproto.ParseShard(shard %d): %v", i, err)
					}
					want := fleetproto.ShardHeader{M: code.m, K: code.k, Index: i, Length: size, Name: n}
					if h != want {
						t.Fatalf("shard %d header = %+v, want %+v", i, h, want)
					}
					hdrs[i], payloads[i] = h, p
				}
				// Leave out each group of K−M shards starting at j.
				for j := 0; j < code.k; j++ {
					set := make([][]byte, code.k)
					copy(set, payloads)
					for d := 0; d < code.k-code.m; d++ {
						set[(j+d)%code.k] = nil
					}
					got, err := cd.rebuild(hdrs[0], set, nil)
					if err != nil {
						t.Fatalf("rebuild without shards from %d: %v", j, err)
					}
					if !bytes.Equal(got, data) {
						t.Fatalf("rebuild without shards from %d: wrong bytes", j)
					}
				}
			})
		}
	}
}

func TestRebuildDetectsCorruptShard(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	cd, _ := newCodec(4, 5)
	data, n := randomChunk(r, 100000)
	shards, _ := cd.encode(n, data)
	h, _, _ := fleetproto.ParseShard(shards[0])
	payloads := make([][]byte, 5)
	for i, s := range shards {
		payloads[i] = s[fleetproto.HeaderSize:]
	}
	payloads[4][7] ^= 0x40 // parity shard
	payloads[1] = nil      // force its use
	_, err := cd.rebuild(h, payloads, nil)
	if !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("rebuild with a corrupt parity shard: err = %v, want chunk.ErrCorrupt", err)
	}
}

func BenchmarkEncode_512K(b *testing.B) {
	cd, _ := newCodec(4, 5)
	data, n := randomChunk(rand.New(rand.NewPCG(5, 6)), chunk.DefaultSize)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cd.encode(n, data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRebuild_512K_4of5(b *testing.B) {
	cd, _ := newCodec(4, 5)
	data, n := randomChunk(rand.New(rand.NewPCG(5, 6)), chunk.DefaultSize)
	shards, _ := cd.encode(n, data)
	h, _, _ := fleetproto.ParseShard(shards[0])
	set := make([][]byte, 5)
	for i := 1; i < 5; i++ { // data shard 0 missing: needs parity
		set[i] = shards[i][fleetproto.HeaderSize:]
	}
	dst := make([]byte, len(data))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cd.rebuild(h, set, dst); err != nil {
			b.Fatal(err)
		}
	}
}
