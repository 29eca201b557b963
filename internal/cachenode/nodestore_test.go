package cachenode

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// get reads a shard through open, into memory (tests only).
func (s *nodeStore) get(k shardKey) ([]byte, bool) {
	r, ok := s.open(k)
	if !ok {
		return nil, false
	}
	defer r.close()
	if r.file == nil {
		return r.data, true
	}
	var b bytes.Buffer
	if _, err := r.writeTo(&b); err != nil {
		return nil, false
	}
	return b.Bytes(), true
}

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
	s := newTestStore(t, 10*(1024+fleetproto.HeaderSize+entryOverhead), "", 0)
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
	per := int64(1024 + fleetproto.HeaderSize + entryOverhead)
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
	per := int64(1024 + fleetproto.HeaderSize + entryOverhead)
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
	// The first 10 demoted fill the disk; the next 6 evicted from memory,
	// each asked for once like the shards on disk, are not admitted (ties
	// keep the incumbent: a stream of shards seen once cannot flush the
	// disk); the newest 4 are in memory. (has does not touch recency or
	// frequency; get would reshuffle the tiers.)
	for i, e := range all {
		if _, ok := s.has(e.k); ok != (i < 10 || i >= 16) {
			t.Errorf("has(shard %d) = %v, want %v", i, ok, i < 10 || i >= 16)
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
	per := int64(1024 + fleetproto.HeaderSize + entryOverhead)
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

// counterValue reads a counter.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// fakeClock replaces the store's clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func useFakeClock(s *nodeStore) *fakeClock {
	c := &fakeClock{time.Unix(1e9, 0)}
	s.now = c.now
	return c
}
func (s *nodeStore) inMemory(k shardKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.mem[k]
	return ok
}
func (s *nodeStore) onDiskIndex(k shardKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.disk[k]
	return ok
}

// checkAccounting recomputes the store's byte counts and list memberships
// from its entries and compares them with the running totals.
func checkAccounting(t *testing.T, s *nodeStore) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var seg [2]int64
	n := 0
	for i, l := range s.seg {
		for el := l.Front(); el != nil; el = el.Next() {
			e := el.Value.(*memEntry)
			if e.seg != i || s.mem[e.key] != el {
				t.Errorf("memory entry %v: segment %d in list %d, indexed %v", e.key, e.seg, i, s.mem[e.key] == el)
			}
			if _, ok := s.disk[e.key]; e.onDisk && !ok {
				t.Errorf("memory entry %v says onDisk, but the disk index lacks it", e.key)
			}
			seg[i] += memSize(e)
			n++
		}
	}
	if seg != s.segBytes || n != len(s.mem) {
		t.Errorf("memory: segments hold %v bytes in %d entries, accounted %v in %d", seg, n, s.segBytes, len(s.mem))
	}
	if seg[0]+seg[1] > s.memBudget {
		t.Errorf("memory holds %d bytes, budget %d", seg[0]+seg[1], s.memBudget)
	}
	var disk int64
	n = 0
	for el := s.diskLRU.Front(); el != nil; el = el.Next() {
		d := el.Value.(*diskEntry)
		fi, err := os.Stat(filepath.Join(s.dir, d.key.fileName()))
		if err != nil || fi.Size() != d.size {
			t.Errorf("disk entry %v of %d bytes: file %v", d.key, d.size, err)
		}
		disk += d.size + entryOverhead
		n++
	}
	if disk != s.diskUsed || n != len(s.disk) || disk > s.diskBudget {
		t.Errorf("disk: %d bytes in %d entries, accounted %d in %d (budget %d)", disk, n, s.diskUsed, len(s.disk), s.diskBudget)
	}
}

// demoted returns a store (fake clock) whose memory holds one shard, with
// the shards of keys written to its disk directory, none in memory.
func demoted(t *testing.T, r *rand.Rand, count int) (*nodeStore, *fakeClock, []shardKey, [][]byte) {
	t.Helper()
	dir := t.TempDir()
	per := int64(1024 + fleetproto.HeaderSize + entryOverhead)
	s := newTestStore(t, per, dir, 100*per)
	var keys []shardKey
	var data [][]byte
	for i := 0; i < count; i++ {
		k, b := testShard(t, r, 4096, i%5)
		s.put(k, b)
		keys, data = append(keys, k), append(data, b)
	}
	fk, filler := testShard(t, r, 4096, 0) // pushes the last one to disk
	s.put(fk, filler)
	// A restart over the same directory: every shard on disk, memory empty.
	s = newTestStore(t, 2*per, dir, 100*per)
	return s, useFakeClock(s), keys, data
}

// TestNodeStoreDiskHitStreams: a shard held only on disk is served from an
// open file, not copied into memory, and its bytes are the shard's.
func TestNodeStoreDiskHitStreams(t *testing.T) {
	s, _, keys, data := demoted(t, rand.New(rand.NewPCG(21, 22)), 3)
	before := s.stats()
	r, ok := s.open(keys[1])
	if !ok {
		t.Fatalf("open(disk shard) missed")
	}
	defer r.close()
	if r.file == nil || r.data != nil || r.size != int64(len(data[1])) {
		t.Fatalf("open(disk shard) = file %v, %d bytes in memory, size %d; want an open file of %d bytes", r.file != nil, len(r.data), r.size, len(data[1]))
	}
	var b bytes.Buffer
	if n, err := r.writeTo(&b); err != nil || n != r.size || !bytes.Equal(b.Bytes(), data[1]) {
		t.Fatalf("writeTo = %d, %v; equal %v; want the %d shard bytes", n, err, bytes.Equal(b.Bytes(), data[1]), len(data[1]))
	}
	if diff := cmp.Diff(before, s.stats()); diff != "" {
		t.Errorf("a first disk hit changed the store (-before +after):\n%s", diff)
	}
	if got := counterValue(s.m.hits.WithLabelValues("disk")); got != 1 {
		t.Errorf("disk hits = %v, want 1", got)
	}
	checkAccounting(t, s)
}

// TestNodeStoreDiskPromotion: a second disk hit brings the shard back into
// memory only within the window and, when memory is full, only if it came
// sooner than memory's least recently used shard was last touched.
func TestNodeStoreDiskPromotion(t *testing.T) {
	tests := []struct {
		name string
		// fillMem fills memory with two other shards (the budget), the LRU
		// one touched lruAge before the second hit.
		fillMem bool
		lruAge  time.Duration
		gap     time.Duration // between the two disk hits
		promote bool
	}{
		{"room, soon", false, 0, time.Second, true},
		{"room, same instant", false, 0, 0, true},
		{"room, after the window", false, 0, diskPromoteWindow + time.Second, false},
		{"full, sooner than the LRU age", true, 10 * time.Second, time.Second, true},
		{"full, later than the LRU age", true, time.Second, 10 * time.Second, false},
		{"full, after the window", true, 2 * diskPromoteWindow, diskPromoteWindow + time.Second, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, clock, keys, data := demoted(t, rand.New(rand.NewPCG(23, uint64(i))), 3)
			k := keys[0]
			if _, ok := s.get(k); !ok || s.inMemory(k) {
				t.Fatalf("first disk hit: present %v, in memory %v; want served, not promoted", ok, s.inMemory(k))
			}
			if tt.fillMem {
				// Memory's LRU entry is keys[1], touched lruAge before the
				// second hit; keys[2] is newer.
				clock.advance(tt.gap - tt.lruAge)
				s.put(keys[1], data[1])
				clock.advance(tt.lruAge)
				s.put(keys[2], data[2])
			} else {
				clock.advance(tt.gap)
			}
			before := s.stats()
			got, ok := s.get(k)
			if !ok || !bytes.Equal(got, data[0]) {
				t.Fatalf("second disk hit: present %v, equal %v; want the shard", ok, bytes.Equal(got, data[0]))
			}
			if s.inMemory(k) != tt.promote {
				t.Fatalf("after the second disk hit, in memory = %v, want %v", s.inMemory(k), tt.promote)
			}
			want := before
			if tt.promote {
				want.MemShards++
				want.MemBytes += int64(len(data[0])) + entryOverhead
				if tt.fillMem { // it evicted memory's LRU shard to disk
					want.MemShards--
					want.MemBytes -= int64(len(data[1])) + entryOverhead
					want.DiskShards++
					want.DiskBytes += int64(len(data[1])) + entryOverhead
				}
			}
			if diff := cmp.Diff(want, s.stats()); diff != "" {
				t.Errorf("store after the second hit (-want +got):\n%s", diff)
			}
			if !s.onDiskIndex(k) {
				t.Errorf("promoted shard lost its disk copy")
			}
			wantProm := 0.0
			if tt.promote {
				wantProm = 1
			}
			if got := counterValue(s.m.promotions); got != wantProm {
				t.Errorf("promotions = %v, want %v", got, wantProm)
			}
			checkAccounting(t, s)
			// The promoted copy knows its file is kept: evicting it again
			// writes nothing.
			if tt.promote {
				s.mu.Lock()
				onDisk := s.mem[k].Value.(*memEntry).onDisk
				s.mu.Unlock()
				if !onDisk {
					t.Errorf("promoted shard not marked as on disk")
				}
			}
		})
	}
}

// TestNodeStoreDropsBadShardFiles: a shard file whose header or length is
// wrong is dropped (index entry and file) and never served, on the
// streaming path (first hit) and on the promotion path (second hit).
func TestNodeStoreDropsBadShardFiles(t *testing.T) {
	r := rand.New(rand.NewPCG(25, 26))
	_, other := testShard(t, r, 4096, 2)
	tests := []struct {
		name  string
		bytes func(good []byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }},
		{"header only", func(b []byte) []byte { return b[:fleetproto.HeaderSize] }},
		{"shorter than a header", func(b []byte) []byte { return b[:10] }},
		{"empty", func(b []byte) []byte { return nil }},
		{"extra byte", func(b []byte) []byte { return append(bytes.Clone(b), 0) }},
		{"bad magic", func(b []byte) []byte { c := bytes.Clone(b); c[0] = 'X'; return c }},
		{"length field disagrees with size", func(b []byte) []byte {
			c := bytes.Clone(b)
			binary.BigEndian.PutUint32(c[8:12], binary.BigEndian.Uint32(c[8:12])+100)
			return c
		}},
		{"another chunk's shard", func([]byte) []byte { return other }},
		{"another index", func(b []byte) []byte { c := bytes.Clone(b); c[7] = (c[7] + 1) % 5; return c }},
	}
	for i, tt := range tests {
		for _, second := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/second hit %v", tt.name, second), func(t *testing.T) {
				s, clock, keys, data := demoted(t, rand.New(rand.NewPCG(27, uint64(i))), 2)
				k := keys[0]
				if second {
					if _, ok := s.get(k); !ok {
						t.Fatalf("first hit of the good file missed")
					}
					clock.advance(time.Second)
				}
				p := filepath.Join(s.dir, k.fileName())
				if err := os.WriteFile(p, tt.bytes(data[0]), 0o600); err != nil {
					t.Fatal(err)
				}
				if r, ok := s.open(k); ok {
					r.close()
					t.Fatalf("open(%s shard file) served it, want a miss", tt.name)
				}
				if s.onDiskIndex(k) || s.inMemory(k) {
					t.Errorf("bad shard still indexed: disk %v memory %v", s.onDiskIndex(k), s.inMemory(k))
				}
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Errorf("bad shard file not removed: %v", err)
				}
				if got, ok := s.get(keys[1]); !ok || !bytes.Equal(got, data[1]) {
					t.Errorf("the other shard: present %v, want its bytes", ok)
				}
				checkAccounting(t, s)
			})
		}
	}
}

// TestNodeStoreAccountingUnderChurn: a random mix of puts, hits, disk hits
// and promotions keeps the byte counts and lists consistent.
func TestNodeStoreAccountingUnderChurn(t *testing.T) {
	r := rand.New(rand.NewPCG(29, 30))
	per := int64(1024 + fleetproto.HeaderSize + entryOverhead)
	s := newTestStore(t, 6*per, t.TempDir(), 20*per)
	clock := useFakeClock(s)
	var keys []shardKey
	want := map[shardKey][]byte{}
	for i := 0; i < 40; i++ {
		k, b := testShard(t, r, 4096, i%5)
		keys = append(keys, k)
		want[k] = b
	}
	for op := 0; op < 2000; op++ {
		clock.advance(time.Duration(r.IntN(2000)) * time.Millisecond)
		k := keys[r.IntN(len(keys))]
		switch r.IntN(3) {
		case 0:
			s.put(k, want[k])
		case 1:
			if got, ok := s.get(k); ok && !bytes.Equal(got, want[k]) {
				t.Fatalf("op %d: get(%v) returned wrong bytes", op, k)
			}
		case 2:
			for _, ref := range s.openAll(k.name) {
				ref.close()
			}
		}
	}
	checkAccounting(t, s)
	if counterValue(s.m.promotions) == 0 || counterValue(s.m.hits.WithLabelValues("disk")) == 0 {
		t.Errorf("churn exercised no disk hits or promotions: %v, %v", counterValue(s.m.hits.WithLabelValues("disk")), counterValue(s.m.promotions))
	}
}

// TestNodeStoreScanAcrossTiers: a node with memory at 10% and disk at 90% of
// its budget (100 shards in all) holds a hot set of 50 shards re-read every
// second; a one-off scan of 8× the node's capacity (800 shards, each a miss
// then the worker's write-back, 100 a second) must leave at least 90% of the
// hot set on the node. With a plain LRU disk tier 8 of 50 stayed.
func TestNodeStoreScanAcrossTiers(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	per := int64(1024 + fleetproto.HeaderSize + entryOverhead)
	s := newTestStore(t, 10*per, t.TempDir(), 90*per)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	var hot []shardKey
	data := map[shardKey][]byte{}
	for range 50 {
		k, b := testShard(t, r, 4096, 2)
		s.put(k, b)
		hot = append(hot, k)
		data[k] = b
	}
	reread := func() {
		for _, k := range hot {
			if r, ok := s.open(k); ok {
				r.close()
			} else {
				s.put(k, data[k]) // a miss: the worker writes the shard back
			}
		}
	}
	for range 10 { // warm: re-read every second
		reread()
		clock = clock.Add(time.Second)
	}
	resident := func() int {
		n := 0
		for _, k := range hot {
			if _, ok := s.has(k); ok {
				n++
			}
		}
		return n
	}
	worst := 50
	for range 8 { // the scan: 100 new shards a second, each read once
		for range 100 {
			k, b := testShard(t, r, 4096, 2)
			if _, ok := s.open(k); ok {
				t.Fatal("a scan shard was stored before its write-back")
			}
			s.put(k, b)
		}
		worst = min(worst, resident()) // before the hot set's next re-read
		reread()
		clock = clock.Add(time.Second)
	}
	if worst < 45 {
		t.Errorf("during a scan of 800 shards, as few as %d of 50 hot shards were resident, want at least 45 (%+v)", worst, s.stats())
	}
	t.Logf("at least %d of 50 hot shards resident during the scan; %+v", worst, s.stats())
}

// BenchmarkNodeStoreEvict measures a put into a full store: the memory
// eviction it causes, the disk tier's admission test and, when admitted, the
// demotion (a file write) and the disk eviction. "rejected" is a scan (each
// shard seen once), "admitted" shards asked for three times first.
func BenchmarkNodeStoreEvict(b *testing.B) {
	r := rand.New(rand.NewPCG(31, 32))
	const pool = 4096
	keys := make([]shardKey, pool)
	bufs := make([][]byte, pool)
	for i := range keys {
		keys[i], bufs[i] = testShard(b, r, 4096, 0)
	}
	per := int64(len(bufs[0])) + entryOverhead
	for _, tc := range []struct {
		name  string
		disk  bool
		reads int
	}{{"memory-only", false, 0}, {"disk/rejected", true, 0}, {"disk/admitted", true, 3}} {
		b.Run(tc.name, func(b *testing.B) {
			dir, disk := "", int64(0)
			if tc.disk {
				dir, disk = b.TempDir(), 900*per
			}
			s, err := newNodeStore(100*per, dir, disk, slog.New(slog.DiscardHandler), NewServerMetrics(nil))
			if err != nil {
				b.Fatal(err)
			}
			for i := range 1000 { // fill both tiers
				s.put(keys[i%pool], bufs[i%pool])
			}
			b.ReportAllocs()
			i := 1000
			for b.Loop() {
				k := keys[i%pool]
				for range tc.reads {
					s.mu.Lock()
					s.freq.add(k)
					s.mu.Unlock()
				}
				s.put(k, bufs[i%pool])
				i++
			}
		})
	}
}
