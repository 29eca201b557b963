package build_test

import (
	"context"
	"fmt"
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
