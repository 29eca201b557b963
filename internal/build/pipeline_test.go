package build_test

import (
	"archive/tar"
	"context"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/build"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/ext4img"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/file"
	"github.com/lode-dev/lode/internal/store/mem"
)

// TestPipelineSameManifest builds one source into a store without a root
// (chunks sealed after the flatten) and into stores whose root exists
// (chunks sealed while the image is written, file: through one batch):
// the chunk names and keys must be the same, and a second build of the
// same source into the pipelined store must deduplicate every chunk.
func TestPipelineSameManifest(t *testing.T) {
	kr := newKeyring(t)
	src := "rootfs:" + rootfsTar(t, 6<<20)
	for _, tc := range []struct {
		name string
		o    build.Options
	}{
		{"raw", build.Options{}},
		{"zstd", build.Options{Compression: manifest.CompressionZstd}},
		{"align", build.Options{Ext4: ext4img.Options{InlineData: true, Align: 512 << 10}}},
		{"one upload worker", build.Options{Uploads: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			names := func(st store.Store, name string) manifest.Manifest {
				t.Helper()
				m, _, err := catalog.Resolve(context.Background(), st, kr, tenant, name)
				if err != nil {
					t.Fatal(err)
				}
				return *m
			}
			o := tc.o
			o.Source, o.Name = src, "img"
			fresh := mem.New()
			res := doBuild(t, fresh, kr, o)
			want := names(fresh, "img")

			fs, err := file.New(filepath.Join(t.TempDir(), "store"))
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range []store.Store{mem.New(), fs} {
				if _, err := store.CreateRoot(context.Background(), st, 1, time.Now()); err != nil {
					t.Fatal(err)
				}
				got := doBuild(t, st, kr, o)
				if got.Early == 0 || res.Early != 0 {
					t.Errorf("%s: %d chunks sealed during the flatten (%d without a root), want > 0 (0)", st, got.Early, res.Early)
				}
				if got.New != res.New || got.Dedup != res.Dedup || got.Holes != res.Holes || got.NewBytes != res.NewBytes {
					t.Errorf("%s: new/dedup/holes/bytes = %d/%d/%d/%d, want %d/%d/%d/%d", st, got.New, got.Dedup, got.Holes, got.NewBytes,
						res.New, res.Dedup, res.Holes, res.NewBytes)
				}
				m := names(st, "img")
				if diff := cmp.Diff(fmt.Sprint(want.Names, want.Keys), fmt.Sprint(m.Names, m.Keys)); diff != "" {
					t.Errorf("%s: chunk names and keys differ from the sequential build (-want +got):\n%s", st, diff)
				}
				for i, n := range m.Names {
					if n.IsZero() {
						continue
					}
					if _, err := st.Stat(context.Background(), store.ChunkKey(store.RootID(m.Root), n)); err != nil {
						t.Fatalf("%s: chunk %d: %v", st, i, err)
					}
				}
				o2 := o
				o2.Name = "again"
				if again := doBuild(t, st, kr, o2); again.New != 0 {
					t.Errorf("%s: rebuild stored %d chunks, want 0", st, again.New)
				}
			}
		})
	}
}

// TestTwoPassFallback builds a rootfs tar whose layer is not in stream
// order (a path written twice, the first time with 3 MiB that the image
// must not hold): the build's one-read flatten gives up after its staged
// image and chunks were partly written and sealed, and the build flattens
// again in two passes. It must store exactly what a build of the same tree
// in stream order stores: the same chunk names and keys, and no chunk or
// staged file of the first attempt.
func TestTwoPassFallback(t *testing.T) {
	kr := newKeyring(t)
	rng := rand.New(rand.NewSource(2))
	big := make([]byte, 3<<20)
	rng.Read(big)
	entry := func(name string, body []byte) tarEntry {
		return tarEntry{h: tar.Header{Typeflag: tar.TypeReg, Name: name}, body: string(body)}
	}
	var tree []tarEntry
	tree = append(tree, tarEntry{h: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}})
	for i := range 8 {
		b := make([]byte, 200<<10)
		rng.Read(b)
		tree = append(tree, entry(fmt.Sprintf("d/f%d", i), b))
	}
	tree = append(tree, entry("d/dup", []byte("the surviving version")))
	inOrder := append([]tarEntry(nil), tree...)
	twice := append([]tarEntry{tree[0], entry("d/dup", big)}, tree[1:]...)

	build1 := func(entries []tarEntry) (manifest.Manifest, build.Result, string) {
		dir := t.TempDir()
		src := filepath.Join(dir, "rootfs.tar")
		if err := os.WriteFile(src, writeTar(t, entries), 0o644); err != nil {
			t.Fatal(err)
		}
		root := filepath.Join(dir, "store")
		st, err := file.New(root)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.CreateRoot(context.Background(), st, 1, time.Now()); err != nil {
			t.Fatal(err)
		}
		res := doBuild(t, st, kr, build.Options{Source: "rootfs:" + src, Name: "img", Compression: manifest.CompressionZstd,
			Ext4: ext4img.Options{InlineData: true, Align: 512 << 10}})
		m, _, err := catalog.Resolve(context.Background(), st, kr, tenant, "img")
		if err != nil {
			t.Fatal(err)
		}
		return *m, res, root
	}
	want, wantRes, wantDir := build1(inOrder)
	got, gotRes, gotDir := build1(twice)
	if diff := cmp.Diff(fmt.Sprint(want.Names, want.Keys), fmt.Sprint(got.Names, got.Keys)); diff != "" {
		t.Errorf("chunk names and keys differ from the in-order tree's (-want +got):\n%s", diff)
	}
	if gotRes.New != wantRes.New || gotRes.Early == 0 {
		t.Errorf("stored %d chunks (%d sealed during the flatten), want %d (> 0)", gotRes.New, gotRes.Early, wantRes.New)
	}
	files := func(dir string) (n int) {
		t.Helper()
		err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				n++
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if w, g := files(wantDir), files(gotDir); w != g {
		t.Errorf("the store holds %d files after the fallback, %d after the in-order build", g, w)
	}
}
