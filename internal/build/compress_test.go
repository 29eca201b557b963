package build_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// textTar writes a rootfs tar of text-like files (compressible about 3×)
// plus one random file (incompressible), about size bytes in all.
func textTar(t *testing.T, size int) string {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	words := strings.Fields("import json email http asyncio sqlite3 def return self class lode chunk manifest tier origin fleet")
	x := uint32(7)
	for i, written := 0, 0; written < size; i++ {
		var body bytes.Buffer
		for body.Len() < 300<<10 {
			x = x*1664525 + 1013904223
			fmt.Fprintf(&body, "%s %d\n", words[x>>27%uint32(len(words))], x>>20)
		}
		if i == 3 {
			body.Reset()
			body.Write(randBytes(3, 700<<10))
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%03d.py", i), Mode: 0o644, Size: int64(body.Len())}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body.Bytes())
		written += body.Len()
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "text.tar")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// chunkBytes sums the stored sizes of the chunks under st's roots.
func chunkBytes(t *testing.T, st store.Store) (n int, size int64) {
	t.Helper()
	err := st.List(context.Background(), "roots/", func(key string, sz int64) error {
		if strings.Contains(key, "/chunks/") {
			n++
			size += sz
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, size
}

func TestZstdBuildReadsBackIdentical(t *testing.T) {
	kr := newKeyring(t)
	src := "rootfs:" + textTar(t, 6<<20)
	dir := t.TempDir()
	type built struct {
		st     store.Store
		image  []byte
		stored int64
		chunks int
		res    build.Result
	}
	var out [2]built
	for i, comp := range []uint8{manifest.CompressionNone, manifest.CompressionZstd} {
		st := mem.New()
		keep := filepath.Join(dir, fmt.Sprintf("image-%d.ext4", comp))
		res := doBuild(t, st, kr, build.Options{Source: src, Name: "app", Compression: comp, KeepImage: keep})
		img, err := os.ReadFile(keep)
		if err != nil {
			t.Fatal(err)
		}
		n, size := chunkBytes(t, st)
		out[i] = built{st: st, image: img, stored: size, chunks: n, res: res}

		m, p, err := catalog.Resolve(context.Background(), st, kr, tenant, "app")
		if err != nil {
			t.Fatal(err)
		}
		if m.Compression != comp {
			t.Errorf("manifest Compression = %d, want %d", m.Compression, comp)
		}
		im, err := agent.NewImage("acme/app", m, agent.Config{Tiers: []agent.Tier{agent.NewOrigin(st, p.Root)}})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, im.Size())
		if _, err := im.ReadAt(context.Background(), got, 0); err != nil {
			t.Fatalf("ReadAt(whole image) = %v", err)
		}
		im.Close()
		if !bytes.Equal(got, img) {
			t.Errorf("compression %d: the agent read back bytes that differ from the built image", comp)
		}
	}
	raw, z := out[0], out[1]
	if !bytes.Equal(raw.image, z.image) {
		t.Error("the ext4 image depends on compression")
	}
	if raw.chunks != z.chunks || raw.res.Holes != z.res.Holes {
		t.Errorf("stored chunks %d (holes %d) raw vs %d (holes %d) zstd; want the same", raw.chunks, raw.res.Holes, z.chunks, z.res.Holes)
	}
	// Text compresses well; the random file's chunks grow by a few bytes.
	if z.stored*2 > raw.stored {
		t.Errorf("zstd stored %d bytes, raw %d: want less than half", z.stored, raw.stored)
	}
	t.Logf("stored chunk bytes: raw %d, zstd %d (%.2f×)", raw.stored, z.stored, float64(raw.stored)/float64(z.stored))

	// Rebuilding with zstd into the same store uploads nothing new: the
	// compressed chunks converge like raw ones.
	again := doBuild(t, z.st, kr, build.Options{Source: src, Name: "again", Compression: manifest.CompressionZstd})
	if again.New != 0 {
		t.Errorf("second zstd build uploaded %d chunks, want 0", again.New)
	}
	// A raw build into the zstd store shares nothing with it (another salt).
	rawIn := doBuild(t, z.st, kr, build.Options{Source: src, Name: "raw"})
	if rawIn.New != raw.chunks {
		t.Errorf("raw build into the zstd store uploaded %d chunks, want %d (all)", rawIn.New, raw.chunks)
	}
}

func TestUnknownCompressionRefused(t *testing.T) {
	kr := newKeyring(t)
	st := mem.New()
	_, err := build.Build(context.Background(), st, kr, kr.StoreSecret(), build.Options{
		Source: "rootfs:" + filepath.Join(t.TempDir(), "never-read.tar"), Tenant: tenant, Name: "x", Compression: 9,
	})
	if err == nil || !strings.Contains(err.Error(), "compression 9") {
		t.Fatalf("Build with compression 9 = %v, want an error naming it", err)
	}
}
