package catalog_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// putSource stores a one-chunk manifest built from source digest src with
// diffIDs and points tenant's image name at it.
func putSource(t *testing.T, st store.Store, kr manifest.Keyring, tenant, name, src string, diffIDs []string) {
	t.Helper()
	ctx := context.Background()
	var n chunk.Name
	var k chunk.Key
	n[0], k[0] = byte(len(name)), 1
	m := &manifest.Manifest{
		Root: string(root), ChunkSize: chunk.DefaultSize, ImageSize: chunk.DefaultSize, FSType: "ext4",
		Names: []chunk.Name{n}, Keys: []chunk.Key{k},
		SourceDigest: src, SourceRef: "docker://127.0.0.1:5000/" + name, DiffIDs: diffIDs,
	}
	sealed, err := manifest.Seal(ctx, m, tenant, kr)
	if err != nil {
		t.Fatal(err)
	}
	id := manifest.ID(sealed)
	if err := st.PutIfAbsent(ctx, store.ManifestKey(root, id), sealed); err != nil && !errors.Is(err, store.ErrExists) {
		t.Fatal(err)
	}
	p := store.Pointer{Root: root, Manifest: id, Created: time.Unix(1700000000, 0).UTC()}
	if err := st.Put(ctx, store.ImageKey(tenant, name), store.MarshalPointer(p)); err != nil {
		t.Fatal(err)
	}
}

func TestFindBySourceAndChainID(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	kr := keyring(t, "a", "b")
	d := func(c string) string { return "sha256:" + strings.Repeat(c, 64) }
	base := []string{d("1")}
	app := []string{d("1"), d("2")}
	putSource(t, st, kr, "a", "base", d("b"), base)
	putSource(t, st, kr, "a", "app", d("a"), app)
	putSource(t, st, kr, "a", "app-copy", d("a"), app)
	putSource(t, st, kr, "b", "other", d("a"), app) // another tenant: never found for "a"
	if err := catalog.Delete(ctx, st, "a", "app-copy"); err != nil {
		t.Fatal(err)
	}
	appChain := manifest.ChainIDs(app)

	names := func(ms []catalog.SourceMatch) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Name+":"+map[bool]string{true: "top", false: "lower"}[m.Top()])
		}
		return out
	}
	for _, tc := range []struct {
		name string
		find func() ([]catalog.SourceMatch, error)
		want []string
	}{
		{"manifest digest", func() ([]catalog.SourceMatch, error) { return catalog.FindBySource(ctx, st, "a", d("a")) }, []string{"app:top"}},
		{"base chain", func() ([]catalog.SourceMatch, error) { return catalog.FindByChainID(ctx, st, "a", appChain[0]) }, []string{"app:lower", "base:top"}},
		{"top chain", func() ([]catalog.SourceMatch, error) { return catalog.FindByChainID(ctx, st, "a", appChain[1]) }, []string{"app:top"}},
		{"unknown digest", func() ([]catalog.SourceMatch, error) { return catalog.FindBySource(ctx, st, "a", d("c")) }, nil},
		{"unknown chain", func() ([]catalog.SourceMatch, error) { return catalog.FindByChainID(ctx, st, "a", d("2")) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.find()
			if tc.want == nil {
				if !errors.Is(err, catalog.ErrNoImage) {
					t.Fatalf("find = %v, %v; want ErrNoImage", names(got), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, names(got)); d != "" {
				t.Errorf("find mismatch (-want +got):\n%s", d)
			}
			for _, m := range got {
				if m.Pointer.Manifest == "" || m.Manifest.SourceRef != "docker://127.0.0.1:5000/"+m.Name {
					t.Errorf("match %s: pointer %+v, source ref %q", m.Name, m.Pointer, m.Manifest.SourceRef)
				}
			}
		})
	}
}
