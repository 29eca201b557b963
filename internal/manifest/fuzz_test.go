package manifest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// fuzzSeeds returns valid sealed manifests (the golden file and a few fresh
// ones) and some broken ones, sealed for "acme" in kr.
func fuzzSeeds(f *testing.F, kr *FileKeyring) [][]byte {
	f.Helper()
	var seeds [][]byte
	for _, g := range []string{"sealed-v2.bin", "sealed-v1.bin"} {
		if b, err := os.ReadFile(filepath.Join("testdata", g)); err == nil {
			seeds = append(seeds, b)
		}
	}
	for _, s := range []spec{
		{chunks: 1},
		{chunks: 4, hole: func(i int) bool { return i == 2 }, hints: []uint32{3, 0}},
		{chunks: 3, short: 100, config: Config{Entrypoint: []string{"/bin/sh"}, Env: []string{"A=1", "B="}, WorkingDir: "/", User: "0"}},
	} {
		b, err := Seal(context.Background(), makeManifest(s), "acme", kr)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	b, err := Seal(context.Background(), katSourceManifest(), "acme", kr)
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, b)
	seeds = append(seeds, nil, []byte(magic), []byte(magic+"\x01\x00"), seeds[0][:len(seeds[0])/2])
	return seeds
}

// checkAllocBound fails if fn allocated more than a small multiple of the
// input: the decoder must never trust a length it has not checked.
func checkAllocBound(t *testing.T, n int, fn func()) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	// Names and keys expand at most 1:1 and 2:1; strings and slices headers
	// add per-entry overhead. 1 MiB of slack covers the fuzzer's own work.
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(64*n+1<<20); got > limit {
		t.Errorf("decoding %d bytes allocated %d bytes (limit %d)", n, got, limit)
	}
}

func FuzzOpen(f *testing.F) {
	// The golden file is sealed with the KAT keyring; seal the rest with it
	// too so every valid seed opens.
	kr := katKeyring()
	for _, s := range fuzzSeeds(f, kr) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m *Manifest
		var err error
		checkAllocBound(t, len(b), func() { m, err = Open(context.Background(), b, "acme", kr) })
		if err != nil {
			if m != nil {
				t.Fatalf("Open() returned a manifest with error %v", err)
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrWrongKey) {
				t.Fatalf("Open() = %v; want ErrCorrupt, ErrVersion or ErrWrongKey", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Open() returned an invalid manifest: %v", err)
		}
		pub, err := ReadPublic(b)
		if err != nil {
			t.Fatalf("Open() succeeded but ReadPublic() = %v", err)
		}
		if d := diffManifest(pub, publicOnly(m)); d != "" {
			t.Fatalf("ReadPublic() disagrees with Open() (-open +public):\n%s", d)
		}
	})
}

func FuzzReadPublic(f *testing.F) {
	for _, s := range fuzzSeeds(f, katKeyring()) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m *Manifest
		var err error
		checkAllocBound(t, len(b), func() { m, err = ReadPublic(b) })
		if err != nil {
			if m != nil {
				t.Fatalf("ReadPublic() returned a manifest with error %v", err)
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("ReadPublic() = %v; want ErrCorrupt or ErrVersion", err)
			}
			return
		}
		if m.Keys != nil || m.Hints != nil || m.Config.User != "" || m.Config.Env != nil {
			t.Fatalf("ReadPublic() returned secret fields")
		}
		if err := m.validatePublic(); err != nil {
			t.Fatalf("ReadPublic() returned an invalid public part: %v", err)
		}
		// Re-encoding the public part reproduces the input's public bytes.
		e, err := parseEnvelope(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendPublic(nil, m, e.version); string(got) != string(e.public) {
			t.Fatalf("public part does not re-encode to the same bytes")
		}
	})
}
