package cachefleet

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
)

// testShard returns a valid 4-of-5 shard (index i) of a random chunk of
// size bytes.
func testShard(t testing.TB, r *rand.Rand, size, i int) (shardKey, []byte) {
	t.Helper()
	cd, _ := newCodec(4, 5)
	data, n := randomChunk(r, size)
	shards, err := cd.encode(n, data)
	if err != nil {
		t.Fatal(err)
	}
	return shardKey{n, uint8(i)}, shards[i]
}

func newTestStore(t *testing.T, mem int64, dir string, disk int64) *nodeStore {
	t.Helper()
	s, err := newNodeStore(mem, dir, disk, slog.New(slog.DiscardHandler), NewServerMetrics(nil))
	if err != nil {
		t.Fatalf("newNodeStore: %v", err)
	}
	return s
}

func TestNodeStoreBudget(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const shard = 4096 // 4 × 1024-byte payloads + header
	s := newTestStore(t, 10*(1024+HeaderSize+entryOverhead), "", 0)
	var keys []shardKey
	for i := 0; i < 30; i++ {
		k, b := testShard(t, r, shard, 0)
		s.put(k, b)
		keys = append(keys, k)
	}
	st := s.stats()
	if st.MemShards != 10 || st.MemBytes > s.memBudget {
		t.Fatalf("after 30 puts: %+v, want 10 shards within %d bytes", st, s.memBudget)
	}
	for i, k := range keys {
		_, ok := s.get(k)
		if want := i >= 20; ok != want {
			t.Errorf("get(shard %d) present = %v, want %v (LRU keeps the newest 10)", i, ok, want)
		}
	}
}

// TestNodeStoreScanResistance: shards read twice are protected, so a scan
// of many shards touched once does not evict them.
func TestNodeStoreScanResistance(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	per := int64(1024 + HeaderSize + entryOverhead)
	s := newTestStore(t, 20*per, "", 0)
	var hot []shardKey
	for i := 0; i < 10; i++ {
		k, b := testShard(t, r, 4096, 1)
		s.put(k, b)
		s.get(k) // second touch: protected
		hot = append(hot, k)
	}
	for i := 0; i < 200; i++ { // the scan: a miss, then the write-back
		k, b := testShard(t, r, 4096, 1)
		s.get(k)
		s.put(k, b)
	}
	kept := 0
	for _, k := range hot {
		if _, ok := s.get(k); ok {
			kept++
		}
	}
	// A plain LRU would keep none of them.
	if kept != 10 {
		t.Errorf("after a scan of 200 shards, %d of 10 hot shards still in memory, want 10", kept)
	}
}

func TestNodeStoreDiskDemotionAndRestart(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	dir := t.TempDir()
	per := int64(1024 + HeaderSize + entryOverhead)
	s := newTestStore(t, 4*per, dir, 10*per)
	type kv struct {
		k shardKey
		b []byte
	}
	var all []kv
	for i := 0; i < 20; i++ {
		k, b := testShard(t, r, 4096, 3)
		s.put(k, b)
		all = append(all, kv{k, b})
	}
	st := s.stats()
	if st.MemShards != 4 || st.DiskShards != 10 {
		t.Fatalf("after 20 puts: %+v, want 4 in memory and 10 on disk", st)
	}
	// The oldest 6 are gone, the next 10 on disk, the newest 4 in memory.
	// (has does not touch recency; get would reshuffle the tiers.)
	for i, e := range all {
		if _, ok := s.has(e.k); ok != (i >= 6) {
			t.Errorf("has(shard %d) = %v, want %v", i, ok, i >= 6)
		}
	}
	for _, i := range []int{19, 6} { // memory, disk
		if got, ok := s.get(all[i].k); !ok || !bytes.Equal(got, all[i].b) {
			t.Errorf("get(shard %d) = present %v, want the stored bytes", i, ok)
		}
	}
	// A stray temp file and a foreign file are handled on restart.
	os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600)
	s2 := newTestStore(t, 4*per, dir, 10*per)
	if st := s2.stats(); st.DiskShards != 10 || st.MemShards != 0 {
		t.Fatalf("restarted store: %+v, want 10 disk shards reused", st)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Errorf("temporary file survived restart: %v", err)
	}
	for i, e := range all {
		_, ok := s2.has(e.k)
		s.mu.Lock()
		_, was := s.disk[e.k]
		s.mu.Unlock()
		if ok != was {
			t.Errorf("restarted store: has(shard %d) = %v, want %v (the disk before restart)", i, ok, was)
		}
	}
	for i, e := range all {
		if _, ok := s2.has(e.k); ok {
			if got, ok := s2.get(e.k); !ok || !bytes.Equal(got, e.b) {
				t.Errorf("restarted store: get(shard %d) = present %v, want the stored bytes", i, ok)
			}
			break
		}
	}
}

func TestNodeStoreDropsCorruptDiskFile(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	dir := t.TempDir()
	per := int64(1024 + HeaderSize + entryOverhead)
	s := newTestStore(t, per, dir, 10*per)
	k, b := testShard(t, r, 4096, 0)
	s.put(k, b)
	k2, b2 := testShard(t, r, 4096, 0)
	s.put(k2, b2) // demotes k
	os.WriteFile(filepath.Join(dir, k.fileName()), b[:10], 0o600)
	if _, ok := s.get(k); ok {
		t.Fatalf("get(truncated shard file) succeeded, want a miss")
	}
	if st := s.stats(); st.DiskShards != 0 {
		t.Errorf("truncated shard still indexed: %+v", st)
	}
}

func TestParseFileName(t *testing.T) {
	n := chunk.NameOf([]byte("x"))
	tests := []struct {
		in string
		ok bool
	}{
		{n.String() + ".0", true},
		{n.String() + ".31", true},
		{n.String() + ".32", false},
		{n.String() + ".01", false},
		{n.String(), false},
		{fmt.Sprintf("%X.1", n[:]), false},
		{".tmp-1", false},
	}
	for _, tt := range tests {
		if _, ok := parseFileName(tt.in); ok != tt.ok {
			t.Errorf("parseFileName(%q) ok = %v, want %v", tt.in, ok, tt.ok)
		}
	}
}
