package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// Issue #19, "blast radius": a manifest that opens with a valid tenant key
// is still tenant input. These tests craft such manifests over chunks the
// worker already caches and check that each fails its own read, never the
// process.

// tenantKeyring is a real file keyring holding tenant "mallory".
func tenantKeyring(t testing.TB) *manifest.FileKeyring {
	t.Helper()
	kr, err := manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.AddTenant("mallory"); err != nil {
		t.Fatal(err)
	}
	return kr
}

// sealAndOpen passes m through the tenant's real envelope, as the worker
// would receive it: only manifests that Seal and Open accept reach the agent.
func sealAndOpen(t testing.TB, kr manifest.Keyring, m *manifest.Manifest) (*manifest.Manifest, error) {
	t.Helper()
	b, err := manifest.Seal(context.Background(), m, "mallory", kr)
	if err != nil {
		return nil, err
	}
	return manifest.Open(context.Background(), b, "mallory", kr)
}

// crafted returns a manifest over chunks of src (by index), at chunkSize.
func crafted(src *manifest.Manifest, chunkSize int, size int64, picks []int, compression uint8) *manifest.Manifest {
	m := &manifest.Manifest{Root: src.Root, ChunkSize: chunkSize, ImageSize: size, FSType: "ext4", Compression: compression}
	for _, p := range picks {
		m.Names = append(m.Names, src.Names[p])
		m.Keys = append(m.Keys, src.Keys[p])
	}
	return m
}

func TestCraftedManifestCannotPanic(t *testing.T) {
	small := buildImage(t, 4096, 4*4096, nil, 1) // chunks of 4 KiB
	big := buildImage(t, 8192, 2*8192, nil, 2)   // chunks of 8 KiB
	kr := tenantKeyring(t)
	st := mem.New()
	for _, ti := range []*testImage{small, big} {
		for _, name := range ti.m.Names {
			b, err := ti.st.Get(context.Background(), store.ChunkKey(testRoot, name), nil)
			if err != nil {
				t.Fatal(err)
			}
			st.Put(context.Background(), store.ChunkKey(testRoot, name), b)
		}
	}
	tests := []struct {
		name   string
		m      *manifest.Manifest
		off    int64
		n      int
		warmed bool // the chunks are in the memory cache first (the reported panic)
	}{
		{"larger chunk size, cached, read past the cached end", crafted(small.m, 8192, 2*8192, []int{0, 1}, 0), 5000, 100, true},
		{"larger chunk size, cached, read inside the cached bytes", crafted(small.m, 8192, 2*8192, []int{0, 1}, 0), 0, 8192, true},
		{"larger chunk size, read across chunks", crafted(small.m, 8192, 2*8192, []int{0, 1}, 0), 4000, 8192, true},
		{"larger chunk size, not cached", crafted(small.m, 8192, 2*8192, []int{2, 3}, 0), 5000, 100, false},
		{"smaller chunk size, cached", crafted(big.m, 4096, 2*4096, []int{0, 1}, 0), 100, 100, true},
		{"smaller chunk size, not cached", crafted(big.m, 4096, 2*4096, []int{1, 0}, 0), 100, 100, false},
		{"raw chunk claimed as zstd", crafted(small.m, 4096, 4096, []int{0}, manifest.CompressionZstd), 0, 4096, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			met := NewMetrics(reg)
			a, err := New(Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{NewOrigin(st, testRoot)}, Metrics: met, Log: testLogger(t, nil)})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			for _, ti := range []*testImage{small, big} {
				honest, err := a.Open("acme/honest", ti.m)
				if err != nil {
					t.Fatal(err)
				}
				if tt.warmed {
					buf := make([]byte, ti.m.ImageSize)
					if _, err := honest.ReadAt(context.Background(), buf, 0); err != nil && err != io.EOF {
						t.Fatal(err)
					}
				}
			}
			m, err := sealAndOpen(t, kr, tt.m)
			if err != nil {
				t.Fatalf("the crafted manifest must open with the tenant's key: %v", err)
			}
			evil, err := a.Open("mallory/evil", m)
			if err != nil {
				t.Fatal(err)
			}
			n, err := evil.ReadAt(context.Background(), make([]byte, tt.n), tt.off)
			if !errors.Is(err, ErrIO) || !errors.Is(err, chunk.ErrCorrupt) || n != 0 {
				t.Errorf("crafted ReadAt = %d, %v; want 0 and an error wrapping ErrIO and chunk.ErrCorrupt", n, err)
			}
			if errors.Is(err, ErrPanic) {
				t.Errorf("crafted ReadAt panicked (recovered): %v; the length check must catch it first", err)
			}
			// The worker goes on serving the honest images, from the cache.
			for _, ti := range []*testImage{small, big} {
				honest, _ := a.Open("acme/honest", ti.m)
				got := make([]byte, ti.m.ImageSize)
				if _, err := honest.ReadAt(context.Background(), got, 0); err != nil && err != io.EOF {
					t.Fatalf("honest read after the crafted one: %v", err)
				}
				if !bytes.Equal(got, ti.plain) {
					t.Error("honest image read back differs after the crafted read")
				}
			}
			if got := testutil.ToFloat64(met.readErrors); got < 1 {
				t.Errorf("lode_agent_read_errors_total = %v, want >= 1", got)
			}
		})
	}
}

// panicTier panics in Fetch: a stand-in for any bug below the agent.
type panicTier struct{}

func (panicTier) Fetch(context.Context, chunk.Name, []byte) ([]byte, error) {
	var b []byte
	_ = b[1<<20] // index out of range, as a missed length check would
	return nil, nil
}
func (panicTier) Fill(context.Context, chunk.Name, []byte) error { return nil }
func (panicTier) Name() string                                   { return "panicky" }

// TestRecoverBoundary checks that a panic in the read path (in the fetch
// goroutine or in the reader's own) fails that one read with EIO, is logged
// and counted, and leaves the agent serving.
func TestRecoverBoundary(t *testing.T) {
	ti := buildImage(t, 4096, 3*4096, nil, 3)
	reg := prometheus.NewRegistry()
	met := NewMetrics(reg)
	logs := &syncBuffer{}
	a, err := New(Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{panicTier{}}, Metrics: met, Log: testLogger(t, logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	im, err := a.Open("acme/app", ti.m)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the agent keeps serving after the first
		n, err := im.ReadAt(context.Background(), make([]byte, 10), 0)
		if n != 0 || !errors.Is(err, ErrIO) || !errors.Is(err, ErrPanic) {
			t.Errorf("read %d: ReadAt = %d, %v; want 0 and ErrIO + ErrPanic", i, n, err)
		}
	}
	if got := testutil.ToFloat64(met.panics); got != 2 {
		t.Errorf("lode_agent_read_panics_total = %v, want 2", got)
	}
	if !strings.Contains(logs.String(), "recovered a panic") || !strings.Contains(logs.String(), "goroutine") {
		t.Errorf("log lacks the recovered panic and its stack:\n%s", logs.String())
	}
	// The reader's own boundary: a panic in ReadAt's goroutine.
	var n int
	err = func() (err error) {
		defer a.recoverRead("acme/app", 7, &n, &err)
		var m map[string]int
		m["x"] = 1 // nil map write panics
		return nil
	}()
	if !errors.Is(err, ErrPanic) || !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "offset 7") {
		t.Errorf("recoverRead error = %v; want ErrIO + ErrPanic naming the offset", err)
	}
	if got := testutil.ToFloat64(met.panics); got != 3 {
		t.Errorf("lode_agent_read_panics_total = %v, want 3", got)
	}
}

// fuzzWorld is the fuzz target's worker: one agent with a memory cache,
// shared by every input so that cached plaintext from earlier inputs is
// there for later ones, and a pool of real chunks at several sizes.
type fuzzWorld struct {
	kr    *manifest.FileKeyring
	a     *Agent
	pool  []chunk.Ref
	plain map[chunk.Ref][]byte
}

var (
	fuzzOnce  sync.Once
	fuzzState *fuzzWorld
)

func newFuzzWorld(t testing.TB) *fuzzWorld {
	fuzzOnce.Do(func() {
		w := &fuzzWorld{plain: map[chunk.Ref][]byte{}}
		// The file is only written here; the keyring works from memory
		// after the first input's TempDir is gone.
		var err error
		w.kr, err = manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := w.kr.AddTenant("mallory"); err != nil {
			t.Fatal(err)
		}
		st := mem.New()
		for i, ti := range []*testImage{
			buildImage(t, 4096, 3*4096+100, nil, 11),
			buildImage(t, 8192, 2*8192, nil, 12),
			zstdImage(t, buildImage(t, 4096, 2*4096, nil, 13)),
		} {
			for j, name := range ti.m.Names {
				ct, err := ti.st.Get(context.Background(), store.ChunkKey(testRoot, name), nil)
				if err != nil {
					t.Fatal(err)
				}
				st.Put(context.Background(), store.ChunkKey(testRoot, name), ct)
				ref := ti.m.Ref(j)
				w.pool = append(w.pool, ref)
				if i < 2 {
					cs := int64(ti.m.ChunkSize)
					w.plain[ref] = ti.plain[int64(j)*cs : min(int64(j+1)*cs, ti.m.ImageSize)]
				}
			}
		}
		w.a, err = New(Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{NewOrigin(st, testRoot)}, ReadAhead: 2, MaxConcurrentFetches: 4})
		if err != nil {
			t.Fatal(err)
		}
		fuzzState = w
	})
	if fuzzState == nil {
		t.Fatal("fuzz world failed to build")
	}
	return fuzzState
}

// FuzzReadCraftedManifest drives the agent's read path with arbitrary
// manifests sealed under a valid tenant key: any chunk size, image size,
// compression and choice of real chunks (each byte of picks names a pool
// chunk, or a hole), read at any offset. No input may panic; a read that
// succeeds must return exactly the chunks' plaintext (zeros for holes).
func FuzzReadCraftedManifest(f *testing.F) {
	f.Add(uint8(1), uint32(2*8192), []byte{1, 2}, false, uint32(5000), uint16(100))
	f.Add(uint8(0), uint32(4*4096), []byte{1, 2, 3, 4}, false, uint32(0), uint16(16384))
	f.Add(uint8(0), uint32(2*4096), []byte{7, 0}, true, uint32(10), uint16(8000))
	f.Add(uint8(1), uint32(8192+17), []byte{5, 4}, false, uint32(8190), uint16(30))
	f.Fuzz(func(t *testing.T, sizeSel uint8, imageSize uint32, picks []byte, zstd bool, off uint32, n uint16) {
		w := newFuzzWorld(t)
		cs := 4096 * (1 + int(sizeSel%4))
		size := 1 + int64(imageSize%(64<<10))
		count := chunk.Count(size, cs)
		m := &manifest.Manifest{Root: string(testRoot), ChunkSize: cs, ImageSize: size, FSType: "ext4"}
		if zstd {
			m.Compression = manifest.CompressionZstd
		}
		for i := range count {
			var p byte
			if len(picks) > 0 {
				p = picks[i%len(picks)]
			}
			var ref chunk.Ref
			if p != 0 {
				ref = w.pool[int(p-1)%len(w.pool)]
			}
			m.Names = append(m.Names, ref.Name)
			m.Keys = append(m.Keys, ref.Key)
		}
		m, err := sealAndOpen(t, w.kr, m)
		if err != nil {
			return // not a manifest the envelope accepts
		}
		im, err := w.a.Open("mallory/fuzz", m)
		if err != nil {
			return
		}
		defer im.Close()
		start := int64(off) % size
		buf := make([]byte, n)
		got, err := im.ReadAt(context.Background(), buf, start)
		if errors.Is(err, ErrPanic) {
			t.Fatalf("ReadAt panicked (recovered): %v", err)
		}
		if err != nil && err != io.EOF {
			return
		}
		if zstd {
			return // the oracle below knows raw plaintext only
		}
		for k := range got {
			pos := start + int64(k)
			i := int(pos / int64(cs))
			var want byte
			if ref := m.Ref(i); !ref.IsHole() {
				pl, ok := w.plain[ref]
				if !ok || len(pl) != min(cs, int(size-int64(i)*int64(cs))) {
					t.Fatalf("ReadAt succeeded over chunk %d whose plaintext cannot be %d bytes", i, cs)
				}
				want = pl[pos-int64(i)*int64(cs)]
			}
			if buf[k] != want {
				t.Fatalf("byte %d at offset %d = %#x, want %#x", k, pos, buf[k], want)
			}
		}
	})
}

// TestNoPlaintextAcrossTenantsFromMemCache: tenant B's plaintext sits in
// the worker's shared memory cache; tenant A (mallory), who knows B's
// public chunk names but not their keys, seals a manifest naming them
// under her own valid key. Her reads fail; no byte of B's plaintext
// reaches her buffer.
func TestNoPlaintextAcrossTenantsFromMemCache(t *testing.T) {
	b := buildImage(t, 4096, 4*4096, nil, 21)
	a, err := New(Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{NewOrigin(b.st, testRoot)}, Log: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	victim, err := a.Open("bravo/app", b.m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := victim.ReadAt(context.Background(), make([]byte, b.m.ImageSize), 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	guess := crafted(b.m, 4096, b.m.ImageSize, []int{0, 1, 2, 3}, 0)
	for i := range guess.Keys {
		guess.Keys[i] = chunk.Key{byte(i + 1)} // any key but the real one
	}
	m, err := sealAndOpen(t, tenantKeyring(t), guess)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := a.Open("mallory/peek", m)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, b.m.ImageSize)
	n, err := evil.ReadAt(context.Background(), buf, 0)
	if !errors.Is(err, ErrIO) || !errors.Is(err, chunk.ErrCorrupt) || n != 0 {
		t.Errorf("ReadAt with B's names and guessed keys = %d, %v; want 0, ErrIO + ErrCorrupt", n, err)
	}
	for i := 0; i+64 <= len(b.plain); i += 4096 {
		if bytes.Contains(buf, b.plain[i:i+64]) {
			t.Fatalf("B's plaintext (chunk at %d) reached A's buffer", i)
		}
	}
}
