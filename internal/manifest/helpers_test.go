package manifest

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/lode-dev/lode/internal/chunk"
)

// cmpManifest compares manifests treating nil and empty slices as equal
// (the decoder returns nil for empty lists).
var cmpManifest = cmpopts.EquateEmpty()

// diffManifest returns a go-cmp diff of got against want, comparing the
// chunk table directly first (go-cmp walks arrays byte by byte, which takes
// seconds for 20,480 names and keys).
func diffManifest(got, want *Manifest) string {
	if got == nil || want == nil {
		return cmp.Diff(want, got)
	}
	if !slices.Equal(got.Names, want.Names) || !slices.Equal(got.Keys, want.Keys) {
		return cmp.Diff(want, got, cmpManifest)
	}
	g, w := *got, *want
	g.Names, g.Keys, w.Names, w.Keys = nil, nil, nil, nil
	return cmp.Diff(&w, &g, cmpManifest)
}

// detReader is a deterministic byte stream: SHA-256(seed ‖ counter) blocks.
type detReader struct {
	seed string
	n    uint64
	buf  []byte
}

func newDetReader(seed string) *detReader { return &detReader{seed: seed} }

func (r *detReader) Read(p []byte) (int, error) {
	for i := range p {
		if len(r.buf) == 0 {
			h := sha256.New()
			h.Write([]byte(r.seed))
			h.Write(binary.LittleEndian.AppendUint64(nil, r.n))
			r.n++
			r.buf = h.Sum(nil)
		}
		p[i] = r.buf[0]
		r.buf = r.buf[1:]
	}
	return len(p), nil
}

// testKeyring is an in-memory FileKeyring (never saved) with deterministic
// randomness and the given tenants.
func testKeyring(t testing.TB, seed string, tenants ...string) *FileKeyring {
	t.Helper()
	rnd := newDetReader(seed)
	k := &FileKeyring{path: "(test keyring " + seed + ")", rand: rnd, secret: make([]byte, StoreSecretSize), tenants: map[string][]byte{}}
	rnd.Read(k.secret)
	for _, tn := range tenants {
		if err := k.AddTenant(tn); err != nil {
			t.Fatalf("AddTenant(%q) = %v", tn, err)
		}
	}
	return k
}

// spec describes a manifest to generate.
type spec struct {
	chunks    int
	chunkSize int
	short     int64 // bytes missing from the last chunk
	hole      func(i int) bool
	config    Config
	hints     []uint32
}

// makeManifest builds a valid manifest from s with deterministic names and
// keys.
func makeManifest(s spec) *Manifest {
	if s.chunkSize == 0 {
		s.chunkSize = chunk.DefaultSize
	}
	m := &Manifest{
		Root:         "r-2024.06.01",
		ChunkSize:    s.chunkSize,
		ImageSize:    int64(s.chunks)*int64(s.chunkSize) - s.short,
		FSType:       "ext4",
		SourceDigest: "sha256:" + fmt.Sprintf("%064x", s.chunks),
		Names:        make([]chunk.Name, s.chunks),
		Keys:         make([]chunk.Key, s.chunks),
		Config:       s.config,
		Hints:        s.hints,
	}
	for i := range m.Names {
		if s.hole != nil && s.hole(i) {
			continue
		}
		m.Names[i] = sha256.Sum256(fmt.Appendf(nil, "name %d", i))
		m.Keys[i] = sha256.Sum256(fmt.Appendf(nil, "key %d", i))
	}
	return m
}

// publicOnly returns what ReadPublic should give for m.
func publicOnly(m *Manifest) *Manifest {
	p := *m
	p.Keys, p.Config, p.Hints = nil, Config{}, nil
	return &p
}

// smallManifest is the manifest of the tamper and isolation tests: a hole,
// a short last chunk, a config and hints.
func smallManifest() *Manifest {
	return makeManifest(spec{
		chunks: 3, chunkSize: 64 << 10, short: 4096,
		hole:   func(i int) bool { return i == 1 },
		config: Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"PATH=/bin"}, WorkingDir: "/srv", User: "1000:1000"},
		hints:  []uint32{2, 0},
	})
}
