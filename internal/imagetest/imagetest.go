// Package imagetest builds real images for tests: a file store with a
// keyring (World), and images built into it by the real pipeline
// (internal/build) from a rootfs tar of random files, returned resolved
// with their ext4 bytes as the oracle of every read.
//
// It owns no production behaviour and is imported only from _test.go files.
package imagetest

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

// World is a file store with a keyring in a test's temporary directory.
type World struct {
	Dir string
	St  *file.Store
	Kr  *manifest.FileKeyring
}

// NewWorld creates a store and a keyring (saved at Dir/keyring.json)
// holding tenants.
func NewWorld(t testing.TB, tenants ...string) *World {
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
	for _, tn := range tenants {
		if err := kr.AddTenant(tn); err != nil {
			t.Fatal(err)
		}
	}
	if err := kr.Save(); err != nil {
		t.Fatal(err)
	}
	return &World{Dir: dir, St: st, Kr: kr}
}

// Image is an image built by the real pipeline into a World's store.
type Image struct {
	Tenant, Name string
	M            *manifest.Manifest
	Ptr          store.Pointer
	Plain        []byte // the built ext4 image: the oracle for every read
}

// RootfsTar writes a rootfs tar of nfiles files of random bytes (sizes
// between 20 KiB and 300 KiB) drawn from seed into dir.
func RootfsTar(t testing.TB, dir string, seed uint64, nfiles int) string {
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

// Build builds a rootfs of nfiles random files (seed) as tenant/name in
// chunks of chunkSize and returns it resolved, with its ext4 bytes.
func (w *World) Build(t testing.TB, tenant, name string, seed uint64, nfiles, chunkSize int) *Image {
	t.Helper()
	ctx := context.Background()
	tmp := t.TempDir()
	keep := filepath.Join(tmp, "image.ext4")
	_, err := build.Build(ctx, w.St, w.Kr, w.Kr.StoreSecret(), build.Options{
		Source: "rootfs:" + RootfsTar(t, tmp, seed, nfiles), Tenant: tenant, Name: name,
		ChunkSize: chunkSize, TempDir: tmp, KeepImage: keep,
	})
	if err != nil {
		t.Fatalf("building %s/%s: %v", tenant, name, err)
	}
	m, p, err := catalog.Resolve(ctx, w.St, w.Kr, tenant, name)
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
	return &Image{Tenant: tenant, Name: name, M: m, Ptr: p, Plain: plain}
}

// ChunkRange is the byte range of chunk i of im.
func (im *Image) ChunkRange(i int) (off, n int64) {
	off = int64(i) * int64(im.M.ChunkSize)
	return off, min(int64(im.M.ChunkSize), im.M.ImageSize-off)
}
