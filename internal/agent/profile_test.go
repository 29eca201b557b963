package agent

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

func TestReadOrder(t *testing.T) {
	ti := stdImage(t) // holes at 2, 5, 6, 10
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{NewOrigin(ti.st, testRoot)}})
	reads := []struct {
		off int64
		n   int
	}{
		{7 * cs, 100},      // chunk 7
		{0, 10},            // chunk 0
		{3*cs - 10, 20},    // chunks 2 (hole) and 3
		{5, 5},             // chunk 0 again
		{9*cs + 1, 3 * cs}, // chunks 9, 10 (hole), 11 (short)
		{7 * cs, 1},        // chunk 7 again
	}
	for _, r := range reads {
		if _, err := im.ReadAt(context.Background(), make([]byte, r.n), r.off); err != nil && r.off+int64(r.n) < im.Size() {
			t.Fatalf("ReadAt(%d, %d) = %v", r.off, r.n, err)
		}
	}
	im.quiesce()
	if diff := cmp.Diff([]uint32{7, 0, 3, 9, 11}, im.ReadOrder()); diff != "" {
		t.Errorf("ReadOrder() (-want +got):\n%s", diff)
	}
}

func TestPrefetchFetchesHintsOnce(t *testing.T) {
	ti := stdImage(t) // holes at 2, 5, 6, 10
	origin := counting(NewOrigin(ti.st, testRoot))
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}})
	hints := []uint32{9, 0, 2, 4, 100, 9}
	n, err := im.Prefetch(context.Background(), hints, 2)
	if err != nil || n != 3 {
		t.Fatalf("Prefetch(%v) = %d, %v; want 3 fetches (9, 0, 4), nil", hints, n, err)
	}
	im.quiesce()
	fetched := func() []int {
		var got []int
		for i, name := range ti.m.Names {
			if name.IsZero() {
				got = append(got, -1)
				continue
			}
			got = append(got, origin.count(ti.m.Names[i]))
		}
		return got
	}
	want := []int{1, 0, -1, 0, 1, -1, -1, 0, 0, 1, -1, 0}
	if diff := cmp.Diff(want, fetched()); diff != "" {
		t.Errorf("origin fetches per chunk after Prefetch (-want +got):\n%s", diff)
	}
	// A read of a prefetched chunk is a memory hit; of another, a fetch.
	buf := make([]byte, cs)
	for _, i := range []int{9, 1} {
		if _, err := im.ReadAt(context.Background(), buf, int64(i)*cs); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, ti.plain[i*cs:(i+1)*cs]) {
			t.Fatalf("ReadAt(chunk %d) returned wrong bytes", i)
		}
	}
	im.quiesce()
	want[1] = 1
	if diff := cmp.Diff(want, fetched()); diff != "" {
		t.Errorf("origin fetches per chunk after reads (-want +got):\n%s", diff)
	}
	st := im.Stats()
	if st.Prefetches != 3 || st.MemHits != 1 || st.Tiers[0].Hits != 4 {
		t.Errorf("Stats: Prefetches %d, MemHits %d, origin hits %d; want 3, 1, 4", st.Prefetches, st.MemHits, st.Tiers[0].Hits)
	}
	// Prefetches are not reads: the read order has only what was read.
	if diff := cmp.Diff([]uint32{9, 1}, im.ReadOrder()); diff != "" {
		t.Errorf("ReadOrder() (-want +got):\n%s", diff)
	}
	N := ServedNone
	wantTiers := []int{0, 0, N, N, 0, N, N, N, N, 0, N, N}
	if diff := cmp.Diff(wantTiers, im.ChunkTiers()); diff != "" {
		t.Errorf("ChunkTiers() (-want +got):\n%s", diff)
	}
	// Again: everything is cached, nothing is fetched.
	if n, err := im.Prefetch(context.Background(), hints, 4); n != 0 || err != nil {
		t.Errorf("second Prefetch = %d, %v; want 0, nil", n, err)
	}
}

func TestChunkTiersMemoryOnly(t *testing.T) {
	ti := stdImage(t)
	mc := NewMemCache(1 << 20)
	a, err := New(Config{Mem: mc, Tiers: []Tier{NewOrigin(ti.st, testRoot)}, Log: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	first, _ := a.Open("acme/one", ti.m)
	second, _ := a.Open("acme/two", ti.m)
	for _, im := range []*Image{first, second} {
		if _, err := im.ReadAt(context.Background(), make([]byte, 10), 3*cs); err != nil {
			t.Fatal(err)
		}
		im.quiesce()
	}
	if got := first.ChunkTiers()[3]; got != 0 {
		t.Errorf("first image: ChunkTiers()[3] = %d, want 0 (origin)", got)
	}
	if got := second.ChunkTiers()[3]; got != ServedMem {
		t.Errorf("second image: ChunkTiers()[3] = %d, want ServedMem", got)
	}
}

func TestPrefetchStopsOnClose(t *testing.T) {
	ti := stdImage(t)
	origin := counting(NewOrigin(ti.st, testRoot))
	origin.gate = make(chan struct{}) // never opens: every fetch stalls
	im, err := NewImage("acme/app", ti.m, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}, MaxConcurrentFetches: 8, Log: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result)
	go func() {
		n, err := im.Prefetch(context.Background(), []uint32{0, 1, 3, 4, 7, 8, 9, 11}, 16)
		done <- result{n, err}
	}()
	// Wait until prefetch holds every slot it may take (8 minus the quarter
	// kept for demand reads), then close.
	for origin.total() < 6 {
		select {
		case r := <-done:
			t.Fatalf("Prefetch returned early: %d, %v", r.n, r.err)
		default:
		}
	}
	if err := im.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	r := <-done
	if r.n != 6 || !errors.Is(r.err, context.Canceled) {
		t.Errorf("Prefetch after Close = %d, %v; want 6 fetches started, context.Canceled", r.n, r.err)
	}
	if _, err := im.Prefetch(context.Background(), []uint32{0}, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Prefetch on a closed image = %v, want ErrClosed", err)
	}
}

// zstdImage seals ti's chunks again as zstd frames into a new store.
func zstdImage(t testing.TB, ti *testImage) *testImage {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	s, err := chunk.NewSealer(bytes.Repeat([]byte{7}, chunk.SecretSize))
	if err != nil {
		t.Fatal(err)
	}
	st := mem.New()
	m := *ti.m
	m.Compression = manifest.CompressionZstd
	m.Names = make([]chunk.Name, len(ti.m.Names))
	m.Keys = make([]chunk.Key, len(ti.m.Keys))
	cs := int64(m.ChunkSize)
	for i, name := range ti.m.Names {
		if name.IsZero() {
			continue
		}
		piece := ti.plain[int64(i)*cs : min(int64(i+1)*cs, m.ImageSize)]
		ref, ct, err := s.Seal(enc.EncodeAll(piece, nil), []byte("zstd"), nil)
		if err != nil {
			t.Fatal(err)
		}
		m.Names[i], m.Keys[i] = ref.Name, ref.Key
		if err := st.Put(context.Background(), store.ChunkKey(testRoot, ref.Name), ct); err != nil {
			t.Fatal(err)
		}
	}
	return &testImage{m: &m, plain: ti.plain, st: st}
}

func TestZstdChunksReadBack(t *testing.T) {
	ti := zstdImage(t, stdImage(t))
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{NewOrigin(ti.st, testRoot)}, ReadAhead: 2})
	got := make([]byte, ti.m.ImageSize)
	for off := int64(0); off < ti.m.ImageSize; off += 7000 {
		end := min(off+7000, ti.m.ImageSize)
		if _, err := im.ReadAt(context.Background(), got[off:end], off); err != nil && end < ti.m.ImageSize {
			t.Fatalf("ReadAt(%d) = %v", off, err)
		}
	}
	if !bytes.Equal(got, ti.plain) {
		t.Error("zstd image read back differs from its plaintext")
	}
}

// TestZstdAndRawNeverShareCache opens one stored object through two
// manifests on one agent: one says it is a zstd frame (and it is), the other
// says it is raw. Each must read its own plaintext, in either order, though
// the memory cache and the single-flight table are shared.
func TestZstdAndRawNeverShareCache(t *testing.T) {
	ti := zstdImage(t, stdImage(t))
	raw := *ti.m
	raw.Compression = manifest.CompressionNone
	raw.ImageSize = int64(raw.ChunkSize) // one chunk
	raw.Names, raw.Keys = raw.Names[:1], raw.Keys[:1]
	frame, err := chunk.Open(ti.m.Ref(0), mustGet(t, ti, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, zstdFirst := range []bool{true, false} {
		a, err := New(Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{NewOrigin(ti.st, testRoot)}, Log: testLogger(t, nil)})
		if err != nil {
			t.Fatal(err)
		}
		z, _ := a.Open("acme/zstd", ti.m)
		r, err := a.Open("acme/raw", &raw)
		if err != nil {
			t.Fatal(err)
		}
		readZ := func() {
			got := make([]byte, cs)
			if _, err := z.ReadAt(context.Background(), got, 0); err != nil || !bytes.Equal(got, ti.plain[:cs]) {
				t.Errorf("zstdFirst=%v: zstd image chunk 0: err %v, equal %v", zstdFirst, err, bytes.Equal(got, ti.plain[:cs]))
			}
		}
		readR := func() {
			got := make([]byte, len(frame))
			_, err := r.ReadAt(context.Background(), got, 0)
			// The frame is shorter than the chunk: the raw manifest's
			// length check turns it into an I/O error, never other bytes.
			if err == nil && !bytes.Equal(got, frame) {
				t.Errorf("zstdFirst=%v: raw image read the decompressed plaintext", zstdFirst)
			}
		}
		if zstdFirst {
			readZ()
			readR()
		} else {
			readR()
			readZ()
		}
		a.Close()
	}
}

func BenchmarkOpenZstd_512K(b *testing.B) {
	benchmarkOpen(b, true)
}

func BenchmarkOpenRaw_512K(b *testing.B) {
	benchmarkOpen(b, false)
}

// benchmarkOpen measures the read path's CPU per 512 KiB chunk: verify,
// decrypt and (zstd) decompress, on text-like data that compresses about 3×.
func benchmarkOpen(b *testing.B, compressed bool) {
	const size = 512 << 10
	plain := textLike(size)
	sealed := plain
	if compressed {
		enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		sealed = enc.EncodeAll(plain, nil)
	}
	s, _ := chunk.NewSealer(bytes.Repeat([]byte{7}, chunk.SecretSize))
	ref, ct, err := s.Seal(sealed, []byte("salt"), nil)
	if err != nil {
		b.Fatal(err)
	}
	c := &call{ref: ref, zstd: compressed, size: size}
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		p, err := openChunk(c, ct, false)
		if err != nil || len(p) != size {
			b.Fatalf("openChunk = %d bytes, %v", len(p), err)
		}
	}
	b.ReportMetric(float64(len(ct)), "stored-B/chunk")
}

// textLike is size bytes of source-code-like text that zstd compresses
// about 3×, the same for every call.
func textLike(size int) []byte {
	plain := make([]byte, size)
	words := []string{"import ", "json", "def ", "return ", "self", ".", "(", ")", ":\n", "    ", "lode ", "chunk ", "0x1f3a ", "# comment\n"}
	x := uint32(1)
	for i := 0; i < size; {
		x = x*1664525 + 1013904223
		i += copy(plain[i:], words[x>>28%uint32(len(words))])
	}
	return plain
}
