package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

const cs = 16 << 10 // chunk size of the test images

// holesAt are the all-zero chunks of the standard test image.
var holesAt = []int{2, 5, 6, 10}

// stdImage is 12 chunks, the last one short, with holes.
func stdImage(t testing.TB) *testImage {
	return buildImage(t, cs, 11*cs+5000, holesAt, 1)
}

func openImage(t testing.TB, ti *testImage, c Config) *Image {
	t.Helper()
	if c.Log == nil {
		c.Log = testLogger(t, nil)
	}
	im, err := NewImage("acme/app", ti.m, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

func TestReadAtMatchesPlaintext(t *testing.T) {
	ti := stdImage(t)
	size := ti.m.ImageSize
	tests := []struct {
		name string
		cfg  func(t *testing.T) Config
	}{
		{"origin only", func(t *testing.T) Config {
			return Config{Tiers: []Tier{NewOrigin(ti.st, testRoot)}}
		}},
		{"mem and origin with read-ahead", func(t *testing.T) Config {
			return Config{Mem: NewMemCache(4 * cs), Tiers: []Tier{NewOrigin(ti.st, testRoot)}, ReadAhead: 3}
		}},
		{"mem disk origin", func(t *testing.T) Config {
			d, err := NewDiskCache(t.TempDir(), 5*cs, nil)
			if err != nil {
				t.Fatal(err)
			}
			return Config{Mem: NewMemCache(2 * cs), Tiers: []Tier{d, NewOrigin(ti.st, testRoot)}, ReadAhead: 2, MaxConcurrentFetches: 2}
		}},
	}
	type rd struct {
		off int64
		n   int
	}
	fixed := []rd{
		{0, 0}, {0, 1}, {0, cs}, {1, cs}, {cs - 1, 2}, {cs - 4096, 3 * cs}, {2 * cs, cs}, {2*cs - 7, cs + 14},
		{0, int(size)}, {size - 1, 1}, {size - 100, 4096}, {size, 10}, {size + 5, 1}, {11 * cs, 5000}, {3 * cs, 5 * cs},
	}
	rng := rand.New(rand.NewPCG(42, 43))
	for range 300 {
		off := rng.Int64N(size + 100)
		fixed = append(fixed, rd{off, rng.IntN(3 * cs)})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im := openImage(t, ti, tt.cfg(t))
			if im.Size() != size {
				t.Fatalf("Size() = %d, want %d", im.Size(), size)
			}
			for _, r := range fixed {
				p := bytes.Repeat([]byte{0xAA}, r.n)
				got, err := im.ReadAt(context.Background(), p, r.off)
				wantN := int(max(0, min(int64(r.n), size-r.off)))
				var wantErr error
				if r.off+int64(r.n) > size && r.n > 0 {
					wantErr = io.EOF
				}
				if got != wantN || err != wantErr {
					t.Fatalf("ReadAt(len %d, off %d) = %d, %v; want %d, %v", r.n, r.off, got, err, wantN, wantErr)
				}
				if wantN > 0 && !bytes.Equal(p[:got], ti.plain[r.off:r.off+int64(got)]) {
					t.Fatalf("ReadAt(len %d, off %d): bytes differ from the plaintext", r.n, r.off)
				}
			}
			if _, err := im.ReadAt(context.Background(), make([]byte, 1), -1); !errors.Is(err, ErrIO) {
				t.Errorf("ReadAt(off -1) error = %v, want ErrIO", err)
			}
		})
	}
}

func TestHolesCauseNoFetch(t *testing.T) {
	ti := stdImage(t)
	origin := counting(NewOrigin(ti.st, testRoot))
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}, ReadAhead: 4})
	for _, h := range holesAt {
		p := bytes.Repeat([]byte{1}, cs)
		n, err := im.ReadAt(context.Background(), p, int64(h)*cs)
		if err != nil || n != cs {
			t.Fatalf("ReadAt(hole %d) = %d, %v", h, n, err)
		}
		if !chunk.IsZero(p) {
			t.Errorf("ReadAt(hole %d) returned non-zero bytes", h)
		}
	}
	// Chunks 5 and 6 are adjacent holes: sequential, but read-ahead of 7..10
	// may fetch; count only what the holes themselves caused before that.
	im.quiesce()
	for _, h := range holesAt {
		if got := origin.count(ti.m.Names[h]); got != 0 {
			t.Errorf("fetches of hole %d = %d, want 0", h, got)
		}
	}
	if got := im.Stats().Holes; got != int64(len(holesAt)) {
		t.Errorf("Stats().Holes = %d, want %d", got, len(holesAt))
	}
}

func TestConcurrentColdReadsFetchOnce(t *testing.T) {
	ti := stdImage(t)
	origin := counting(NewOrigin(ti.st, testRoot))
	origin.gate = make(chan struct{})
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}})
	const readers = 50
	const idx = 3
	ref := ti.m.Ref(idx)
	var wg sync.WaitGroup
	errs := make([]error, readers)
	bufs := make([][]byte, readers)
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs[r] = make([]byte, 4096)
			_, errs[r] = im.ReadAt(context.Background(), bufs[r], idx*cs+int64(r)*100)
		}()
	}
	// Release the origin once every reader waits on the one fetch.
	for {
		im.a.mu.Lock()
		c := im.a.calls[ref]
		joined := c != nil && c.waiters == readers
		im.a.mu.Unlock()
		if joined {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(origin.gate)
	wg.Wait()
	for r := range readers {
		off := idx*cs + r*100
		if errs[r] != nil || !bytes.Equal(bufs[r], ti.plain[off:off+4096]) {
			t.Fatalf("reader %d: err %v or wrong bytes", r, errs[r])
		}
	}
	if got := origin.count(ref.Name); got != 1 {
		t.Errorf("origin fetches of chunk %d = %d, want 1", idx, got)
	}
	st := im.Stats()
	if st.Tiers[0].Hits != 1 || st.MemHits != 0 {
		t.Errorf("Stats: origin hits %d, mem hits %d; want 1, 0", st.Tiers[0].Hits, st.MemHits)
	}
}

func TestBadChunkInOrigin(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, ti *testImage, key string)
		wantErr error
		verify  int64
	}{
		{"tampered", func(t *testing.T, ti *testImage, key string) {
			ct, err := ti.st.Get(context.Background(), key, nil)
			if err != nil {
				t.Fatal(err)
			}
			ct[100] ^= 1
			if err := ti.st.Put(context.Background(), key, ct); err != nil {
				t.Fatal(err)
			}
		}, chunk.ErrCorrupt, 1},
		{"missing", func(t *testing.T, ti *testImage, key string) {
			if err := ti.st.Delete(context.Background(), key); err != nil {
				t.Fatal(err)
			}
		}, store.ErrNotFound, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ti := stdImage(t)
			const idx = 4
			name := ti.m.Names[idx]
			tt.damage(t, ti, store.ChunkKey(testRoot, name))
			logs := &syncBuffer{}
			d, err := NewDiskCache(t.TempDir(), 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{d, NewOrigin(ti.st, testRoot)}, Log: testLogger(t, logs)})
			p := make([]byte, 3*cs)
			n, err := im.ReadAt(context.Background(), p, 3*cs) // chunks 3, 4, 5
			if n != 0 || !errors.Is(err, ErrIO) || !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReadAt = %d, %v; want 0 and an error wrapping ErrIO and %v", n, err, tt.wantErr)
			}
			for _, s := range []string{name.String(), "acme/app"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %q", err, s)
				}
				// A corrupt chunk is a tier's failure, logged where the
				// agent moves past it; a missing one is not.
				if tt.verify > 0 && !strings.Contains(logs.String(), s) {
					t.Errorf("logs do not name %q:\n%s", s, logs)
				}
			}
			// The failed read itself is logged once, by whoever handles it
			// (a frontend's EIO), not by the agent.
			if strings.Contains(logs.String(), `msg="reading chunk"`) {
				t.Errorf("the agent logged the failed read:\n%s", logs)
			}
			im.quiesce()
			if d.Len() != 1 { // chunk 3 only; never the bad one
				t.Errorf("disk cache holds %d chunks, want 1", d.Len())
			}
			st := im.Stats()
			if st.FetchErrors != 1 || st.VerifyFailures != tt.verify || st.BytesRead != 0 {
				t.Errorf("Stats: FetchErrors %d, VerifyFailures %d, BytesRead %d; want 1, %d, 0", st.FetchErrors, st.VerifyFailures, st.BytesRead, tt.verify)
			}
		})
	}
}

func TestCorruptDiskFileHealedFromOrigin(t *testing.T) {
	ti := stdImage(t)
	dir := t.TempDir()
	d, err := NewDiskCache(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	const idx = 7
	name := ti.m.Names[idx]
	ct, err := ti.st.Get(context.Background(), store.ChunkKey(testRoot, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Fill(context.Background(), name, ct); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(ct)
	bad[0] ^= 0xFF
	if err := os.WriteFile(d.path(name), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	origin := counting(NewOrigin(ti.st, testRoot))
	im := openImage(t, ti, Config{Tiers: []Tier{d, origin}})
	p := make([]byte, cs)
	if n, err := im.ReadAt(context.Background(), p, idx*cs); n != cs || err != nil || !bytes.Equal(p, ti.plain[idx*cs:(idx+1)*cs]) {
		t.Fatalf("ReadAt = %d, %v (bytes match: %v)", n, err, bytes.Equal(p, ti.plain[idx*cs:(idx+1)*cs]))
	}
	im.quiesce()
	if got := origin.count(name); got != 1 {
		t.Errorf("origin fetches = %d, want 1", got)
	}
	onDisk, err := os.ReadFile(d.path(name))
	if err != nil {
		t.Fatalf("the healed file is missing: %v", err)
	}
	if !bytes.Equal(onDisk, ct) {
		t.Errorf("the disk cache file was not replaced by the verified ciphertext")
	}
	st := im.Stats()
	want := []TierStats{{Tier: "disk"}, {Tier: "origin", Hits: 1, Chunks: 1, Bytes: int64(len(ct))}}
	if diff := cmp.Diff(want, st.Tiers); diff != "" || st.VerifyFailures != 1 {
		t.Errorf("Stats tiers (-want +got):\n%s\nVerifyFailures = %d, want 1", diff, st.VerifyFailures)
	}
	// The healed file now serves.
	im2 := openImage(t, ti, Config{Tiers: []Tier{d, origin}})
	if n, err := im2.ReadAt(context.Background(), p, idx*cs); n != cs || err != nil {
		t.Fatalf("second ReadAt = %d, %v", n, err)
	}
	if got := origin.count(name); got != 1 {
		t.Errorf("origin fetches after healing = %d, want still 1", got)
	}
}

func TestDiskCacheSurvivesReopen(t *testing.T) {
	ti := stdImage(t)
	dir := t.TempDir()
	d1, err := NewDiskCache(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	im := openImage(t, ti, Config{Tiers: []Tier{d1, NewOrigin(ti.st, testRoot)}})
	all := make([]byte, ti.m.ImageSize)
	if _, err := im.ReadAt(context.Background(), all, 0); err != nil {
		t.Fatal(err)
	}
	im.Close()
	nonHoles := len(ti.m.Names) - ti.m.Holes()

	d2, err := NewDiskCache(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Len() != nonHoles || d2.Bytes() != d1.Bytes() {
		t.Fatalf("reopened cache: %d chunks, %d bytes; want %d, %d", d2.Len(), d2.Bytes(), nonHoles, d1.Bytes())
	}
	origin := counting(NewOrigin(ti.st, testRoot))
	im2 := openImage(t, ti, Config{Tiers: []Tier{d2, origin}})
	clear(all)
	if _, err := im2.ReadAt(context.Background(), all, 0); err != nil || !bytes.Equal(all, ti.plain) {
		t.Fatalf("ReadAt after reopen: %v (bytes match: %v)", err, bytes.Equal(all, ti.plain))
	}
	if got := origin.total(); got != 0 {
		t.Errorf("origin fetches after reopen = %d, want 0", got)
	}
	if got := im2.Stats().Tiers[0].Hits; got != int64(nonHoles) {
		t.Errorf("disk hits = %d, want %d", got, nonHoles)
	}
}

// diskFiles returns the total size of chunk files under dir.
func diskFiles(t *testing.T, d *DiskCache) (n int, size int64) {
	t.Helper()
	top, err := os.ReadDir(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range top {
		if !e.IsDir() {
			continue
		}
		sub, err := os.ReadDir(d.dir + "/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range sub {
			info, err := f.Info()
			if err != nil {
				t.Fatal(err)
			}
			n++
			size += info.Size()
		}
	}
	return n, size
}

func TestDiskCacheBudgetEvictsLRU(t *testing.T) {
	ctx := context.Background()
	// Five distinct ciphertexts of 1000 bytes; the budget holds three.
	var names []chunk.Name
	var cts [][]byte
	for i := range 5 {
		ct := bytes.Repeat([]byte{byte(i + 1)}, 1000)
		names = append(names, chunk.NameOf(ct))
		cts = append(cts, ct)
	}
	dir := t.TempDir()
	d, err := NewDiskCache(dir, 3000, nil)
	if err != nil {
		t.Fatal(err)
	}
	has := func(d *DiskCache) []bool {
		var got []bool
		for _, n := range names {
			_, err := d.Fetch(ctx, n, nil)
			got = append(got, err == nil)
		}
		return got
	}
	for i := range 3 {
		if err := d.Fill(ctx, names[i], cts[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Fetch(ctx, names[0], nil); err != nil { // 0 becomes most recent; 1 is now LRU
		t.Fatal(err)
	}
	if err := d.Fill(ctx, names[3], cts[3]); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		want []bool
	}{
		{"after filling 3", []bool{true, false, true, true, false}},
	}
	for _, s := range steps {
		// Check through the index, not Fetch, so recency is not disturbed.
		var got []bool
		for _, n := range names {
			d.mu.Lock()
			_, ok := d.idx[n]
			d.mu.Unlock()
			got = append(got, ok)
		}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s: present (-want +got):\n%s", s.name, diff)
		}
	}
	if n, size := diskFiles(t, d); n != 3 || size != 3000 || d.Bytes() != 3000 {
		t.Errorf("files %d, %d bytes, Bytes() %d; want 3, 3000, 3000", n, size, d.Bytes())
	}
	// A wrong ciphertext is refused.
	if err := d.Fill(ctx, names[4], cts[3]); !errors.Is(err, chunk.ErrCorrupt) {
		t.Errorf("Fill(wrong ciphertext) = %v, want ErrCorrupt", err)
	}
	// Reopening with a smaller budget evicts down to it.
	d2, err := NewDiskCache(dir, 2000, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, size := diskFiles(t, d2); n != 2 || size > 2000 || d2.Bytes() != size {
		t.Errorf("after reopen with 2000 bytes: files %d, %d bytes, Bytes() %d", n, size, d2.Bytes())
	}
	if got := has(d2); got[1] || got[4] {
		t.Errorf("after reopen present = %v; evicted chunks came back", got)
	}
	// A temporary file left by a crash is removed on open.
	tmp := dir + "/" + tmpPrefix + "crash"
	if err := os.WriteFile(tmp, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDiskCache(dir, 2000, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file survived reopen: %v", err)
	}
}

func TestTierMissIsNotFound(t *testing.T) {
	ti := stdImage(t)
	d, err := NewDiskCache(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	var missing chunk.Name
	missing[0] = 1
	for _, tier := range []Tier{d, NewOrigin(ti.st, testRoot)} {
		if _, err := tier.Fetch(context.Background(), missing, nil); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s.Fetch(missing) = %v, want ErrNotFound", tier.Name(), err)
		}
		if err := tier.Fill(context.Background(), ti.m.Names[0], mustGet(t, ti, 0)); err != nil {
			t.Errorf("%s.Fill = %v", tier.Name(), err)
		}
		got, err := tier.Fetch(context.Background(), ti.m.Names[0], make([]byte, 0, 2*cs))
		if err != nil || !bytes.Equal(got, mustGet(t, ti, 0)) {
			t.Errorf("%s.Fetch after Fill = %v (bytes match: %v)", tier.Name(), err, bytes.Equal(got, mustGet(t, ti, 0)))
		}
	}
}

func mustGet(t *testing.T, ti *testImage, i int) []byte {
	t.Helper()
	ct, err := ti.st.Get(context.Background(), store.ChunkKey(testRoot, ti.m.Names[i]), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func TestMemCacheBound(t *testing.T) {
	c := NewMemCache(2500)
	ref := func(i byte) chunk.Ref { return chunk.Ref{Name: chunk.Name{i}, Key: chunk.Key{i}} }
	for i := byte(1); i <= 3; i++ {
		c.Put(ref(i), make([]byte, 1000))
		if c.Bytes() > 2500 {
			t.Fatalf("after Put %d: Bytes() = %d > 2500", i, c.Bytes())
		}
	}
	// 1 was evicted (least recent); 2 and 3 remain.
	if _, ok := c.Get(ref(1)); ok {
		t.Errorf("Get(1) hit after eviction")
	}
	c.Get(ref(2)) // 3 becomes LRU
	c.Put(ref(4), make([]byte, 1000))
	got := []bool{c.Contains(ref(1)), c.Contains(ref(2)), c.Contains(ref(3)), c.Contains(ref(4))}
	if diff := cmp.Diff([]bool{false, true, false, true}, got); diff != "" {
		t.Errorf("present (-want +got):\n%s", diff)
	}
	c.Put(ref(5), make([]byte, 3000)) // larger than the budget: not cached
	if c.Contains(ref(5)) || c.Bytes() != 2000 || c.Len() != 2 {
		t.Errorf("after oversized Put: contains %v, Bytes %d, Len %d; want false, 2000, 2", c.Contains(ref(5)), c.Bytes(), c.Len())
	}
	// The same name with another key is a different entry.
	other := chunk.Ref{Name: chunk.Name{2}, Key: chunk.Key{9}}
	if _, ok := c.Get(other); ok {
		t.Errorf("Get(name 2, wrong key) hit")
	}
}

func TestStallingOrigin(t *testing.T) {
	ti := stdImage(t)
	t.Run("fetch timeout", func(t *testing.T) {
		s := &stallTier{entered: make(chan error, 10), returned: make(chan error, 10)}
		im := openImage(t, ti, Config{Tiers: []Tier{s}, FetchTimeout: 50 * time.Millisecond})
		n, err := im.ReadAt(context.Background(), make([]byte, 10), 0)
		if n != 0 || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrIO) {
			t.Fatalf("ReadAt = %d, %v; want 0, DeadlineExceeded and ErrIO", n, err)
		}
	})
	t.Run("caller cancels", func(t *testing.T) {
		s := &stallTier{entered: make(chan error, 10), returned: make(chan error, 10)}
		im := openImage(t, ti, Config{Tiers: []Tier{s}, FetchTimeout: time.Hour})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-s.entered
			cancel()
		}()
		n, err := im.ReadAt(ctx, make([]byte, 10), 0)
		if n != 0 || !errors.Is(err, context.Canceled) || !errors.Is(err, ErrIO) {
			t.Fatalf("ReadAt = %d, %v; want 0, Canceled and ErrIO", n, err)
		}
		// The last waiter left, so the shared fetch was cancelled too.
		if got := <-s.returned; !errors.Is(got, context.Canceled) {
			t.Errorf("origin fetch ended with %v, want Canceled", got)
		}
	})
	t.Run("one waiter leaving keeps the fetch for the others", func(t *testing.T) {
		origin := counting(NewOrigin(ti.st, testRoot))
		origin.gate = make(chan struct{})
		im := openImage(t, ti, Config{Tiers: []Tier{origin}, Mem: NewMemCache(1 << 20)})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 2)
		go func() { _, err := im.ReadAt(ctx, make([]byte, 10), 0); errc <- err }()
		p := make([]byte, 10)
		go func() { _, err := im.ReadAt(context.Background(), p, 0); errc <- err }()
		for {
			im.a.mu.Lock()
			c := im.a.calls[ti.m.Ref(0)]
			joined := c != nil && c.waiters == 2
			im.a.mu.Unlock()
			if joined {
				break
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled reader got %v", err)
		}
		close(origin.gate)
		if err := <-errc; err != nil || !bytes.Equal(p, ti.plain[:10]) {
			t.Fatalf("other reader got %v", err)
		}
		if got := origin.total(); got != 1 {
			t.Errorf("origin fetches = %d, want 1", got)
		}
	})
}

func TestSequentialReadsTriggerReadAhead(t *testing.T) {
	ti := stdImage(t) // holes at 2, 5, 6, 10
	origin := counting(NewOrigin(ti.st, testRoot))
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}, ReadAhead: 3})
	read := func(i int) {
		t.Helper()
		if _, err := im.ReadAt(context.Background(), make([]byte, 4096), int64(i)*cs); err != nil {
			t.Fatal(err)
		}
		im.quiesce()
	}
	fetched := func() []int {
		var got []int
		for _, n := range ti.m.Names {
			got = append(got, origin.count(n))
		}
		return got
	}
	steps := []struct {
		read int
		want []int // origin fetches per chunk after the read (holes share the zero name: 0)
		ra   int64
	}{
		{read: 8, want: []int{0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, ra: 0},  // first read: not sequential
		{read: 0, want: []int{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, ra: 0},  // a jump
		{read: 1, want: []int{1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, ra: 0},  // 0→1: one step is not yet a stream
		{read: 2, want: []int{1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0}, ra: 2},  // 1→2: prefetch 3..5, 2 and 5 holes
		{read: 3, want: []int{1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0}, ra: 2},  // 6 a hole
		{read: 4, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0}, ra: 3},  // 7 fetched
		{read: 5, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0}, ra: 3},  // 8 cached
		{read: 6, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0}, ra: 4},  // 9 fetched
		{read: 7, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0}, ra: 4},  // 10 a hole
		{read: 9, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0}, ra: 4},  // a little ahead: no read-ahead
		{read: 10, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1}, ra: 5}, // the stream goes on: 11 fetched
		{read: 0, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1}, ra: 5},  // a jump back
		{read: 1, want: []int{1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1}, ra: 5},  // one step: nothing more
	}
	for _, s := range steps {
		read(s.read)
		if diff := cmp.Diff(s.want, fetched()); diff != "" {
			t.Fatalf("after reading chunk %d, origin fetches (-want +got):\n%s", s.read, diff)
		}
		if got := im.Stats().ReadAheads; got != s.ra {
			t.Fatalf("after reading chunk %d, ReadAheads = %d, want %d", s.read, got, s.ra)
		}
	}
	// Prefetched chunks were served from memory.
	st := im.Stats()
	if st.MemHits != 6 || st.Tiers[0].Hits != 8 {
		t.Errorf("MemHits %d, origin hits %d; want 6 (3, 4, 7, 9, then 0 and 1 again), 8", st.MemHits, st.Tiers[0].Hits)
	}
}

func TestStatsScript(t *testing.T) {
	ti := stdImage(t)
	ctLen := func(i int) int64 { return int64(len(mustGet(t, ti, i))) }
	d, err := NewDiskCache(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	met := NewMetrics(reg)
	a, err := New(Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{d, NewOrigin(ti.st, testRoot)}, Metrics: met, Log: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	im, err := a.Open("acme/app", ti.m)
	if err != nil {
		t.Fatal(err)
	}
	type rd struct {
		off int64
		n   int
	}
	script := []rd{
		{0, 100},             // chunk 0 from origin
		{50, 100},            // chunk 0 from memory
		{2 * cs, cs},         // hole 2
		{cs - 10, cs + 20},   // chunk 0 memory, 1 origin, hole 2
		{11 * cs, 5000},      // last chunk (short) from origin
		{11*cs + 4000, 2000}, // memory, short at EOF
	}
	var bytesRead int64
	for _, r := range script {
		n, err := im.ReadAt(context.Background(), make([]byte, r.n), r.off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		bytesRead += int64(n)
	}
	im.quiesce()
	last := int64(5000)
	want := Stats{
		ImageSize:          ti.m.ImageSize,
		ChunkCount:         12,
		Tiers:              []TierStats{{Tier: "disk"}, {Tier: "origin", Hits: 3, Chunks: 3, Bytes: ctLen(0) + ctLen(1) + ctLen(11)}},
		MemHits:            3,
		Holes:              2,
		DistinctChunksRead: 4,
		DistinctBytesRead:  2*cs + last,
		BytesRead:          100 + 100 + cs + cs + 20 + 5000 + 1000,
		VerifyFailures:     0,
	}
	if bytesRead != want.BytesRead {
		t.Fatalf("script returned %d bytes, want %d", bytesRead, want.BytesRead)
	}
	got := im.Stats()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
	if got, want := got.ShareRead(), float64(2*cs+last)/float64(ti.m.ImageSize); got != want {
		t.Errorf("ShareRead() = %v, want %v", got, want)
	}
	// A second image on the same chunks, with an empty memory cache on a
	// new agent sharing the disk cache: everything from disk.
	im2 := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{d, NewOrigin(ti.st, testRoot)}, Metrics: met})
	if _, err := im2.ReadAt(context.Background(), make([]byte, 2*cs), 0); err != nil {
		t.Fatal(err)
	}
	wantTiers := []TierStats{{Tier: "disk", Hits: 2, Chunks: 2, Bytes: ctLen(0) + ctLen(1)}, {Tier: "origin"}}
	if diff := cmp.Diff(wantTiers, im2.Stats().Tiers); diff != "" {
		t.Errorf("second image tiers (-want +got):\n%s", diff)
	}
	// Prometheus counters add both images.
	metricsWant := []struct {
		c    prometheus.Metric
		want float64
	}{
		{met.requests.WithLabelValues("origin", "hit"), 3},
		{met.requests.WithLabelValues("disk", "miss"), 3},
		{met.requests.WithLabelValues("disk", "hit"), 2},
		{met.requests.WithLabelValues("mem", "hit"), 3},
		{met.requests.WithLabelValues("mem", "miss"), 5},
		{met.tierBytes.WithLabelValues("disk"), float64(ctLen(0) + ctLen(1))},
		{met.readBytes, float64(bytesRead + 2*cs)},
		{met.holeReads, 2},
		{met.memBytes, float64(2 * cs)}, // the last agent to write wins the gauge
	}
	for i, m := range metricsWant {
		if got := metricValue(t, m.c); got != m.want {
			t.Errorf("metric %d = %v, want %v", i, got, m.want)
		}
	}
	ch := make(chan prometheus.Metric, 10)
	met.fetchSeconds.Collect(ch)
	close(ch)
	if n := len(ch); n != 3 {
		t.Errorf("fetch latency histograms = %d, want 3 (mem, disk, origin)", n)
	}
}

func TestConfigAndManifestErrors(t *testing.T) {
	ti := stdImage(t)
	if _, err := New(Config{}); err == nil {
		t.Errorf("New(no tiers) succeeded")
	}
	if _, err := New(Config{Tiers: []Tier{NewOrigin(ti.st, testRoot)}, ReadAhead: -1}); err == nil {
		t.Errorf("New(ReadAhead -1) succeeded")
	}
	bad := *ti.m
	bad.Keys = bad.Keys[:3]
	if _, err := NewImage("acme/app", &bad, Config{Tiers: []Tier{NewOrigin(ti.st, testRoot)}}); err == nil || !strings.Contains(err.Error(), "acme/app") {
		t.Errorf("NewImage(short keys) = %v, want an error naming the image", err)
	}
	im := openImage(t, ti, Config{Tiers: []Tier{NewOrigin(ti.st, testRoot)}})
	im.Close()
	if _, err := im.ReadAt(context.Background(), make([]byte, 1), 0); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrIO) {
		t.Errorf("ReadAt after Close = %v, want ErrClosed and ErrIO", err)
	}
}

func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	}
	t.Fatalf("metric %v is neither a counter nor a gauge", m.Desc())
	return 0
}

// TestConcurrentReadersUnderEviction runs many readers over small caches, so
// fetches, write-backs, evictions and read-ahead interleave; run with -race.
func TestConcurrentReadersUnderEviction(t *testing.T) {
	ti := stdImage(t)
	d, err := NewDiskCache(t.TempDir(), 3*cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Mem: NewMemCache(2 * cs), Tiers: []Tier{d, NewOrigin(ti.st, testRoot)},
		MaxConcurrentFetches: 3, ReadAhead: 2, Log: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ims := make([]*Image, 2)
	for i := range ims {
		if ims[i], err = a.Open("acme/app", ti.m); err != nil {
			t.Fatal(err)
		}
	}
	const readers = 8
	errs := make(chan error, readers)
	for r := range readers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			im := ims[r%2]
			for k := range 200 {
				off := rng.Int64N(ti.m.ImageSize)
				if k%3 == 0 {
					off = int64(k%12) * cs // sequential runs for read-ahead
				}
				p := make([]byte, 1+rng.IntN(2*cs))
				n, err := im.ReadAt(context.Background(), p, off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(p[:n], ti.plain[off:off+int64(n)]) {
					errs <- fmt.Errorf("reader %d: wrong bytes at %d", r, off)
					return
				}
			}
			errs <- nil
		}()
	}
	for range readers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, im := range ims {
		im.Close()
	}
	a.idle()
	if d.Bytes() > 3*cs || a.cfg.Mem.Bytes() > 2*cs {
		t.Errorf("caches over budget: disk %d, mem %d", d.Bytes(), a.cfg.Mem.Bytes())
	}
	if n, size := diskFiles(t, d); size != d.Bytes() || n != d.Len() {
		t.Errorf("disk files %d (%d bytes), index %d (%d bytes)", n, size, d.Len(), d.Bytes())
	}
}

// TestReadAheadToleratesReordering: the kernel's concurrent requests of one
// sequential stream arrive slightly out of order; a late request must not
// stop read-ahead, and a new stream behind an earlier one gets its own.
func TestReadAheadToleratesReordering(t *testing.T) {
	ti := stdImage(t) // holes at 2, 5, 6, 10
	origin := counting(NewOrigin(ti.st, testRoot))
	im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}, ReadAhead: 3})
	read := func(i int) {
		t.Helper()
		if _, err := im.ReadAt(context.Background(), make([]byte, 4096), int64(i)*cs); err != nil {
			t.Fatal(err)
		}
		im.quiesce()
	}
	for _, i := range []int{8, 9, 10} { // an earlier stream near the end: read-ahead scheduled to the last chunk
		read(i)
	}
	read(0)
	read(1)
	read(2) // a new stream at the start: its read-ahead (3, 4) is not skipped for the earlier one
	if got := origin.count(ti.m.Names[3]); got != 1 {
		t.Fatalf("chunk 3 fetched %d times after reading 0, 1, 2; want 1 (read-ahead of the new stream)", got)
	}
	read(4)
	read(3) // arrives after 4, as concurrent kernel requests do
	before := im.Stats().ReadAheads
	read(5) // still sequential: read-ahead fetches 7 (6 is a hole)
	if got := im.Stats().ReadAheads; got == before {
		t.Errorf("no read-ahead after a late request (ReadAheads stayed %d)", got)
	}
	if got := origin.count(ti.m.Names[7]); got != 1 {
		t.Errorf("chunk 7 fetched %d times after reading 5, want 1", got)
	}
}
