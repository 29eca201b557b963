package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/file"
)

// relChunkSize keeps the reliability images small but many-chunked.
const relChunkSize = 64 << 10

// builtImage is an image built by the real pipeline into a file store.
type builtImage struct {
	tenant, name string
	m            *manifest.Manifest
	ptr          store.Pointer
	plain        []byte // the built ext4 image: the oracle for every read
}

// relWorld is a file store with a keyring holding tenants "a" and "b".
type relWorld struct {
	dir string
	st  *file.Store
	kr  *manifest.FileKeyring
}

func newRelWorld(t testing.TB) *relWorld {
	t.Helper()
	dir := t.TempDir()
	st, err := file.New(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	kr, err := manifest.CreateFileKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"a", "b"} {
		if err := kr.AddTenant(tn); err != nil {
			t.Fatal(err)
		}
	}
	if err := kr.Save(); err != nil {
		t.Fatal(err)
	}
	return &relWorld{dir: dir, st: st, kr: kr}
}

// rootfsTar writes a rootfs tar of nfiles files of random bytes (sizes
// between 20 KiB and 300 KiB) drawn from seed.
func rootfsTar(t testing.TB, dir string, seed uint64, nfiles int) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 99))
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mt := time.Unix(1700000000, 0)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "data/", Mode: 0o755, ModTime: mt})
	for i := range nfiles {
		body := make([]byte, 20<<10+rng.IntN(280<<10))
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("data/f%02d", i), Mode: 0o644, Size: int64(len(body)), ModTime: mt}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, fmt.Sprintf("rootfs-%d.tar", seed))
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// build builds a rootfs of nfiles random files as tenant/name and returns
// it resolved, with its ext4 bytes.
func (w *relWorld) build(t testing.TB, tenant, name string, seed uint64, nfiles int) *builtImage {
	t.Helper()
	ctx := context.Background()
	tmp := t.TempDir()
	keep := filepath.Join(tmp, "image.ext4")
	_, err := build.Build(ctx, w.st, w.kr, w.kr.StoreSecret(), build.Options{
		Source: "rootfs:" + rootfsTar(t, tmp, seed, nfiles), Tenant: tenant, Name: name,
		ChunkSize: relChunkSize, TempDir: tmp, KeepImage: keep,
	})
	if err != nil {
		t.Fatalf("building %s/%s: %v", tenant, name, err)
	}
	m, p, err := catalog.Resolve(ctx, w.st, w.kr, tenant, name)
	if err != nil {
		t.Fatalf("Resolve(%s/%s) = %v", tenant, name, err)
	}
	plain, err := os.ReadFile(keep)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(plain)) != m.ImageSize {
		t.Fatalf("kept image is %d bytes, manifest says %d", len(plain), m.ImageSize)
	}
	return &builtImage{tenant: tenant, name: name, m: m, ptr: p, plain: plain}
}

// chunkRange is the byte range of chunk i of im.
func (im *builtImage) chunkRange(i int) (off, n int64) {
	off = int64(i) * int64(im.m.ChunkSize)
	return off, min(int64(im.m.ChunkSize), im.m.ImageSize-off)
}
