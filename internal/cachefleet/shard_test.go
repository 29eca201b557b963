package cachefleet

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
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
				hdrs := make([]ShardHeader, code.k)
				payloads := make([][]byte, code.k)
				for i, s := range shards {
					h, p, err := ParseShard(s)
					if err != nil {
						t.Fatalf("ParseShard(shard %d): %v", i, err)
					}
					want := ShardHeader{M: code.m, K: code.k, Index: i, Length: size, Name: n}
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
	h, _, _ := ParseShard(shards[0])
	payloads := make([][]byte, 5)
	for i, s := range shards {
		payloads[i] = s[HeaderSize:]
	}
	payloads[4][7] ^= 0x40 // parity shard
	payloads[1] = nil      // force its use
	_, err := cd.rebuild(h, payloads, nil)
	if !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("rebuild with a corrupt parity shard: err = %v, want chunk.ErrCorrupt", err)
	}
}

func TestParseShardRejects(t *testing.T) {
	cd, _ := newCodec(4, 5)
	data := []byte("hello, shard")
	shards, _ := cd.encode(chunk.NameOf(data), data)
	good := shards[2]
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"short header", good[:HeaderSize-1]},
		{"magic", mod(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"version", mod(func(b []byte) []byte { b[4] = 2; return b })},
		{"M zero", mod(func(b []byte) []byte { b[5] = 0; return b })},
		{"K below M", mod(func(b []byte) []byte { b[6] = 3; return b })},
		{"K too large", mod(func(b []byte) []byte { b[6] = MaxShards + 1; return b })},
		{"index out of range", mod(func(b []byte) []byte { b[7] = 5; return b })},
		{"length zero", mod(func(b []byte) []byte { b[8], b[9], b[10], b[11] = 0, 0, 0, 0; return b })},
		{"length too large", mod(func(b []byte) []byte { b[8] = 0xff; return b })},
		{"payload short", good[:len(good)-1]},
		{"payload long", append(bytes.Clone(good), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := ParseShard(tt.in); !errors.Is(err, ErrBadShard) {
				t.Errorf("ParseShard(%s) err = %v, want ErrBadShard", tt.name, err)
			}
		})
	}
	if _, p, err := ParseShard(good); err != nil || len(p) != 3 {
		t.Errorf("ParseShard(good) = %d payload bytes, %v; want 3, nil", len(p), err)
	}
}

func TestSplitShards(t *testing.T) {
	cd, _ := newCodec(2, 3)
	data := bytes.Repeat([]byte("abc"), 1001)
	shards, _ := cd.encode(chunk.NameOf(data), data)
	cat := bytes.Join(shards, nil)
	got, err := SplitShards(cat)
	if err != nil || len(got) != 3 {
		t.Fatalf("SplitShards(3 shards) = %d, %v; want 3, nil", len(got), err)
	}
	for i := range got {
		if !bytes.Equal(got[i], shards[i]) {
			t.Errorf("SplitShards shard %d differs", i)
		}
	}
	if _, err := SplitShards(cat[:len(cat)-1]); !errors.Is(err, ErrBadShard) {
		t.Errorf("SplitShards(truncated) err = %v, want ErrBadShard", err)
	}
}

// FuzzShardHeader: ParseShard and SplitShards never panic, and whatever
// ParseShard accepts re-encodes to the same header bytes.
func FuzzShardHeader(f *testing.F) {
	cd, _ := newCodec(4, 5)
	data := []byte("fuzz seed chunk")
	shards, _ := cd.encode(chunk.NameOf(data), data)
	f.Add(shards[0])
	f.Add(shards[4])
	f.Add(bytes.Join(shards, nil))
	f.Add([]byte("LDSH"))
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		SplitShards(b)
		h, p, err := ParseShard(b)
		if err != nil {
			return
		}
		hdr := make([]byte, HeaderSize)
		h.put(hdr)
		if !bytes.Equal(hdr, b[:HeaderSize]) || len(p) != h.payloadSize() {
			t.Fatalf("ParseShard accepted %x as %+v, which re-encodes to %x", b[:HeaderSize], h, hdr)
		}
	})
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
	h, _, _ := ParseShard(shards[0])
	set := make([][]byte, 5)
	for i := 1; i < 5; i++ { // data shard 0 missing: needs parity
		set[i] = shards[i][HeaderSize:]
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
