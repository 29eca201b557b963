package fleetproto

import (
	"bytes"
	"errors"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
)

// testShards frames data as the K shards of an M-of-K code: the data
// shards carry it, the parity shards are zero (the format does not look at
// payloads; internal/cachefleet's codec tests check the coding).
func testShards(m, k int, data []byte) [][]byte {
	h := ShardHeader{M: m, K: k, Length: len(data), Name: chunk.NameOf(data)}
	shards := make([][]byte, k)
	for i := range shards {
		shards[i] = make([]byte, HeaderSize+h.PayloadSize())
		h.Index = i
		h.Put(shards[i])
		if i < m {
			data = data[copy(shards[i][HeaderSize:], data):]
		}
	}
	return shards
}

func TestParseShardRejects(t *testing.T) {
	shards := testShards(4, 5, []byte("hello, shard"))
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
	shards := testShards(2, 3, bytes.Repeat([]byte("abc"), 1001))
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
	shards := testShards(4, 5, []byte("fuzz seed chunk"))
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
		h.Put(hdr)
		if !bytes.Equal(hdr, b[:HeaderSize]) || len(p) != h.PayloadSize() {
			t.Fatalf("ParseShard accepted %x as %+v, which re-encodes to %x", b[:HeaderSize], h, hdr)
		}
	})
}
