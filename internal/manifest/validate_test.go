package manifest

import (
	"errors"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/chunk"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(m *Manifest)
		ok     bool
	}{
		{"valid", func(m *Manifest) {}, true},
		{"valid root with every allowed character", func(m *Manifest) { m.Root = "aZ09._:@+-" }, true},
		{"empty root", func(m *Manifest) { m.Root = "" }, false},
		{"root with slash", func(m *Manifest) { m.Root = "a/b" }, false},
		{"root starting with dot", func(m *Manifest) { m.Root = ".." }, false},
		{"root too long", func(m *Manifest) { m.Root = strings.Repeat("r", 129) }, false},
		{"chunk size not a multiple of 4096", func(m *Manifest) { m.ChunkSize = 1000 }, false},
		{"chunk size too large", func(m *Manifest) { m.ChunkSize = chunk.MaxSize * 2 }, false},
		{"zero image size", func(m *Manifest) { m.ImageSize = 0 }, false},
		{"negative image size", func(m *Manifest) { m.ImageSize = -1 }, false},
		{"image size needs one more chunk", func(m *Manifest) { m.ImageSize++ }, false},
		{"image size needs one chunk fewer", func(m *Manifest) { m.ImageSize -= int64(m.ChunkSize) }, false},
		{"image size shorter within the last chunk", func(m *Manifest) { m.ImageSize -= 100 }, true},
		{"unknown fstype", func(m *Manifest) { m.FSType = "xfs" }, false},
		{"empty fstype", func(m *Manifest) { m.FSType = "" }, false},
		{"zstd compression", func(m *Manifest) { m.Compression = CompressionZstd }, true},
		{"unknown compression", func(m *Manifest) { m.Compression = 2 }, false},
		{"source digest too long", func(m *Manifest) { m.SourceDigest = strings.Repeat("d", MaxString+1) }, false},
		{"empty source digest", func(m *Manifest) { m.SourceDigest = "" }, true},
		{"fewer keys than names", func(m *Manifest) { m.Keys = m.Keys[:3] }, false},
		{"nil keys", func(m *Manifest) { m.Keys = nil }, false},
		{"hole with a key", func(m *Manifest) { m.Keys[0] = chunk.Key{1} }, false},
		{"stored chunk with zero key", func(m *Manifest) { m.Keys[1] = chunk.Key{} }, false},
		{"too many env entries", func(m *Manifest) { m.Config.Env = make([]string, MaxList+1) }, false},
		{"env entry too long", func(m *Manifest) { m.Config.Env = []string{strings.Repeat("e", MaxString+1)} }, false},
		{"entrypoint entry too long", func(m *Manifest) { m.Config.Entrypoint = []string{strings.Repeat("e", MaxString+1)} }, false},
		{"too many cmd entries", func(m *Manifest) { m.Config.Cmd = make([]string, MaxList+1) }, false},
		{"user too long", func(m *Manifest) { m.Config.User = strings.Repeat("u", MaxString+1) }, false},
		{"working dir too long", func(m *Manifest) { m.Config.WorkingDir = strings.Repeat("w", MaxString+1) }, false},
		{"hint out of range", func(m *Manifest) { m.Hints = []uint32{4} }, false},
		{"hint far out of range", func(m *Manifest) { m.Hints = []uint32{0xffffffff} }, false},
		{"repeated hint", func(m *Manifest) { m.Hints = []uint32{1, 2, 1} }, false},
		{"more hints than chunks", func(m *Manifest) { m.Hints = []uint32{0, 1, 2, 3, 0} }, false},
		{"hint on a hole", func(m *Manifest) { m.Hints = []uint32{0} }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := makeManifest(spec{chunks: 4, hole: func(i int) bool { return i == 0 }, hints: []uint32{3}})
			tc.change(m)
			err := m.Validate()
			if tc.ok && err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate() = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestHoles(t *testing.T) {
	m := makeManifest(spec{chunks: 10, hole: func(i int) bool { return i%4 == 0 }})
	if got := m.Holes(); got != 3 {
		t.Errorf("Holes() = %d, want 3", got)
	}
	if r := m.Ref(4); !r.IsHole() {
		t.Errorf("Ref(4) = %v, want a hole", r)
	}
	if r := m.Ref(5); r.IsHole() || r.Key != m.Keys[5] || r.Name != m.Names[5] {
		t.Errorf("Ref(5) = %v, want name %s with its key", r, m.Names[5])
	}
}

func TestParseCompression(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint8
		ok   bool
	}{{"", CompressionNone, true}, {"none", CompressionNone, true}, {"zstd", CompressionZstd, true}, {"gzip", 0, false}, {"ZSTD", 0, false}} {
		got, err := ParseCompression(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseCompression(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
