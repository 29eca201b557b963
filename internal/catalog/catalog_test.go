package catalog_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

const root = store.RootID("r-000001")

func keyring(t *testing.T, tenants ...string) *manifest.FileKeyring {
	t.Helper()
	kr, err := manifest.CreateFileKeyring(filepath.Join(t.TempDir(), "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range tenants {
		if err := kr.AddTenant(tn); err != nil {
			t.Fatal(err)
		}
	}
	return kr
}

// put stores a manifest naming chunks (by small ids; 0 is a hole) and,
// unless pointer is false, points tenant's image name at it.
func put(t *testing.T, st store.Store, kr manifest.Keyring, tenant, name string, ids []byte, pointer bool) store.Pointer {
	t.Helper()
	ctx := context.Background()
	m := &manifest.Manifest{Root: string(root), ChunkSize: chunk.DefaultSize, ImageSize: int64(len(ids)) * chunk.DefaultSize, FSType: "ext4"}
	for _, id := range ids {
		var n chunk.Name
		var k chunk.Key
		if id != 0 {
			n[0], k[0] = id, id
		}
		m.Names = append(m.Names, n)
		m.Keys = append(m.Keys, k)
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
	if pointer {
		if err := st.Put(ctx, store.ImageKey(tenant, name), store.MarshalPointer(p)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestResolveListDelete(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	kr := keyring(t, "a", "b")
	put(t, st, kr, "a", "app", []byte{1, 2, 0, 3}, true)
	put(t, st, kr, "a", "base", []byte{1, 2}, true)

	m, p, err := catalog.Resolve(ctx, st, kr, "a", "app")
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if len(m.Names) != 4 || m.Holes() != 1 || p.Root != root {
		t.Errorf("Resolve = %d chunks, %d holes, root %s", len(m.Names), m.Holes(), p.Root)
	}
	if _, _, err := catalog.Resolve(ctx, st, kr, "a", "nope"); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("Resolve(missing) = %v, want ErrNoImage", err)
	}
	if _, _, err := catalog.Resolve(ctx, st, kr, "b", "app"); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("Resolve by another tenant = %v, want ErrNoImage", err)
	}
	// Tenant b reading a's pointer with b's key: wrong key, not data.
	if err := st.Put(ctx, store.ImageKey("b", "stolen"), mustGet(t, st, store.ImageKey("a", "app"))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := catalog.Resolve(ctx, st, kr, "b", "stolen"); !errors.Is(err, manifest.ErrWrongKey) {
		t.Errorf("Resolve of a's manifest as b = %v, want ErrWrongKey", err)
	}
	if _, _, err := catalog.Resolve(ctx, st, kr, "a", "../x"); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("Resolve(../x) = %v, want ErrInvalidKey", err)
	}

	names := func(all bool) []string {
		es, err := catalog.List(ctx, st, "a", all)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Name)
		}
		return out
	}
	if diff := cmp.Diff([]string{"app", "base"}, names(false)); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if err := catalog.Delete(ctx, st, "a", "base"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"app"}, names(false)); diff != "" {
		t.Errorf("List after delete (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"app", "base"}, names(true)); diff != "" {
		t.Errorf("List --all after delete (-want +got):\n%s", diff)
	}
	if _, _, err := catalog.Resolve(ctx, st, kr, "a", "base"); !errors.Is(err, catalog.ErrNoImage) {
		t.Errorf("Resolve(deleted) = %v, want ErrNoImage", err)
	}
}

func TestResolveDetectsSwappedManifest(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	kr := keyring(t, "a")
	p := put(t, st, kr, "a", "app", []byte{1, 2}, true)
	other := put(t, st, kr, "a", "other", []byte{3}, false)
	// Replace app's manifest object with other's (valid) bytes.
	if err := st.Put(ctx, store.ManifestKey(root, p.Manifest), mustGet(t, st, store.ManifestKey(root, other.Manifest))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := catalog.Resolve(ctx, st, kr, "a", "app"); !errors.Is(err, manifest.ErrCorrupt) {
		t.Errorf("Resolve of a swapped manifest = %v, want ErrCorrupt", err)
	}
}

func TestShareCountsLiveImagesOnly(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	kr := keyring(t, "a", "b")
	p := put(t, st, kr, "a", "app", []byte{1, 2, 3, 4, 0}, true)
	put(t, st, kr, "b", "other", []byte{1, 2, 9}, true)          // another tenant's live image shares 1, 2
	put(t, st, kr, "a", "old-build", []byte{3, 4}, false)        // no pointer: left by a rebuild
	dp := put(t, st, kr, "a", "gone", []byte{4}, true)           // deleted below
	if err := catalog.Delete(ctx, st, "a", "gone"); err != nil { // shares 4, but is not live
		t.Fatal(err)
	}
	_ = dp
	m, _, err := catalog.Resolve(ctx, st, kr, "a", "app")
	if err != nil {
		t.Fatal(err)
	}
	got, err := catalog.Share(ctx, st, m, p)
	if err != nil {
		t.Fatal(err)
	}
	want := catalog.Sharing{Chunks: 5, Holes: 1, Distinct: 4, Shared: 2, Unique: 2, OtherImages: 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Share (-want +got):\n%s", diff)
	}
}

func mustGet(t *testing.T, st store.Store, key string) []byte {
	t.Helper()
	b, err := st.Get(context.Background(), key, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
