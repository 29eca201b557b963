package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/file"
)

// world is a file store with images built by the real pipeline, and their
// bytes as the oracle.
type world struct {
	dir    string
	st     *file.Store
	kr     *manifest.FileKeyring
	images []*image
}

type image struct {
	name  string
	m     *manifest.Manifest
	ptr   store.Pointer
	plain []byte
}

// newWorld builds n images of about size bytes each (random files, so no
// chunk is shared and none is a hole) with chunkSize chunks, under dir.
func newWorld(ctx context.Context, dir string, n int, size int64, chunkSize int, seed uint64) (*world, error) {
	return buildWorld(ctx, dir, n, size, chunkSize, seed, false)
}

// buildWorld is newWorld; with keep, the images' bytes stay in
// DIR/imgN.ext4 instead of memory (image.plain is nil).
func buildWorld(ctx context.Context, dir string, n int, size int64, chunkSize int, seed uint64, keepFiles bool) (*world, error) {
	st, err := file.New(filepath.Join(dir, "store"))
	if err != nil {
		return nil, err
	}
	kr, err := manifest.CreateFileKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		return nil, err
	}
	if err := kr.AddTenant("bench"); err != nil {
		return nil, err
	}
	if err := kr.Save(); err != nil {
		return nil, err
	}
	w := &world{dir: dir, st: st, kr: kr}
	for i := range n {
		name := fmt.Sprintf("img%d", i)
		tarPath := filepath.Join(dir, name+".tar")
		if err := writeRootfs(tarPath, size, seed+uint64(i)); err != nil {
			return nil, err
		}
		keep := filepath.Join(dir, name+".ext4")
		if _, err := build.Build(ctx, st, kr, kr.StoreSecret(), build.Options{
			Source: "rootfs:" + tarPath, Tenant: "bench", Name: name, ChunkSize: chunkSize, TempDir: dir, KeepImage: keep,
		}); err != nil {
			return nil, fmt.Errorf("building %s: %w", name, err)
		}
		m, p, err := catalog.Resolve(ctx, st, kr, "bench", name)
		if err != nil {
			return nil, err
		}
		var plain []byte
		if !keepFiles {
			if plain, err = os.ReadFile(keep); err != nil {
				return nil, err
			}
			os.Remove(keep)
		}
		os.Remove(tarPath)
		w.images = append(w.images, &image{name: "bench/" + name, m: m, ptr: p, plain: plain})
	}
	return w, nil
}

// writeRootfs writes a tar of random files totalling about size bytes.
func writeRootfs(path string, size int64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 5))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	mt := time.Unix(1700000000, 0)
	buf := make([]byte, 1<<20)
	for i := 0; size > 0; i++ {
		n := min(size, int64(64<<10+rng.IntN(1<<20)))
		size -= n
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%04d", i), Mode: 0o644, Size: n, ModTime: mt}); err != nil {
			return err
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			for j := range buf[:k] {
				buf[j] = byte(rng.Uint32())
			}
			tw.Write(buf[:k])
			n -= k
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// openWorld opens a world built with keepFiles by another process.
func openWorld(ctx context.Context, dir string, n int) (*world, error) {
	st, err := file.New(filepath.Join(dir, "store"))
	if err != nil {
		return nil, err
	}
	kr, err := manifest.LoadFileKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		return nil, err
	}
	w := &world{dir: dir, st: st, kr: kr}
	for i := range n {
		name := fmt.Sprintf("img%d", i)
		m, p, err := catalog.Resolve(ctx, st, kr, "bench", name)
		if err != nil {
			return nil, err
		}
		w.images = append(w.images, &image{name: "bench/" + name, m: m, ptr: p})
	}
	return w, nil
}

// check verifies that everything stored is intact: every chunk object of
// every image hashes to its name and every image resolves. It returns the
// number of objects checked.
func (w *world) check(ctx context.Context) (int, error) {
	n := 0
	for _, im := range w.images {
		if _, _, err := catalog.Resolve(ctx, w.st, w.kr, "bench", im.name[len("bench/"):]); err != nil {
			return n, err
		}
		n++
		seen := map[chunk.Name]bool{}
		for _, c := range im.m.Names {
			if c.IsZero() || seen[c] {
				continue
			}
			seen[c] = true
			ct, err := w.st.Get(ctx, store.ChunkKey(im.ptr.Root, c), nil)
			if err != nil {
				return n, fmt.Errorf("chunk %s: %w", c, err)
			}
			if sha256.Sum256(ct) != c {
				return n, fmt.Errorf("chunk %s: stored bytes do not hash to the name", c)
			}
			n++
		}
	}
	return n, nil
}

// equal reports whether p is im's bytes at off.
func (im *image) equal(p []byte, off int64) bool {
	return bytes.Equal(p, im.plain[off:off+int64(len(p))])
}
