package catalog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// ErrNoImage means the tenant has no image of that name.
var ErrNoImage = errors.New("no such image")

// Entry is one image of a tenant.
type Entry struct {
	Tenant, Name string
	Pointer      store.Pointer
}

// Lookup reads the pointer of tenant's image name.
func Lookup(ctx context.Context, st store.Store, tenant, name string) (store.Pointer, error) {
	key, err := imageKey(tenant, name)
	if err != nil {
		return store.Pointer{}, err
	}
	b, err := st.Get(ctx, key, nil)
	if errors.Is(err, store.ErrNotFound) {
		return store.Pointer{}, fmt.Errorf("image %s of tenant %s in %s: %w", name, tenant, st, ErrNoImage)
	}
	if err != nil {
		return store.Pointer{}, fmt.Errorf("reading image %s of tenant %s: %w", name, tenant, err)
	}
	return store.UnmarshalPointer(key, b)
}

// Resolve returns the opened (decrypted, authenticated) manifest of tenant's
// image name and its pointer. Deleted images are not resolved.
func Resolve(ctx context.Context, st store.Store, kr manifest.Keyring, tenant, name string) (*manifest.Manifest, store.Pointer, error) {
	p, err := Lookup(ctx, st, tenant, name)
	if err != nil {
		return nil, p, err
	}
	m, err := ResolvePointer(ctx, st, kr, tenant, name, p)
	return m, p, err
}

// ResolvePointer is the second half of Resolve: the opened manifest that
// pointer p (from Lookup) of tenant's image name names. A caller that reads
// something else by the pointer's manifest id (a learned profile, worker.Open)
// does so while this reads the manifest.
func ResolvePointer(ctx context.Context, st store.Store, kr manifest.Keyring, tenant, name string, p store.Pointer) (*manifest.Manifest, error) {
	if p.Deleted {
		return nil, fmt.Errorf("image %s of tenant %s was deleted: %w", name, tenant, ErrNoImage)
	}
	return openManifest(ctx, st, kr, tenant, name, p)
}

// openManifest reads the manifest p names, checks it hashes to its id and
// opens it with tenant's key.
func openManifest(ctx context.Context, st store.Store, kr manifest.Keyring, tenant, name string, p store.Pointer) (*manifest.Manifest, error) {
	sealed, err := st.Get(ctx, store.ManifestKey(p.Root, p.Manifest), nil)
	if err != nil {
		return nil, fmt.Errorf("reading manifest %s of image %s/%s: %w", p.Manifest, tenant, name, err)
	}
	if got := manifest.ID(sealed); got != p.Manifest {
		return nil, fmt.Errorf("manifest of image %s/%s: object %s hashes to %s: %w", tenant, name, p.Manifest, got, manifest.ErrCorrupt)
	}
	m, err := manifest.OpenImage(ctx, sealed, tenant, name, kr)
	if err != nil {
		return nil, fmt.Errorf("opening manifest %s of image %s/%s: %w", p.Manifest, tenant, name, err)
	}
	// m.Root is the root the image was built in (its salt); after the
	// garbage collector copies the manifest forward, the pointer's root is
	// where it and its chunks live now. Readers use the pointer's.
	return m, nil
}

// List returns tenant's images, sorted by name, including deleted ones when
// all is true.
func List(ctx context.Context, st store.Store, tenant string, all bool) ([]Entry, error) {
	if err := store.ValidName("tenant", tenant); err != nil {
		return nil, err
	}
	prefix := store.ImagesPrefix(tenant)
	var out []Entry
	err := st.List(ctx, prefix, func(key string, _ int64) error {
		name := strings.TrimPrefix(key, prefix)
		if strings.Contains(name, "/") {
			return nil
		}
		b, err := st.Get(ctx, key, nil)
		if errors.Is(err, store.ErrNotFound) {
			return nil // deleted while listing
		}
		if err != nil {
			return err
		}
		p, err := store.UnmarshalPointer(key, b)
		if err != nil {
			return err
		}
		if p.Deleted && !all {
			return nil
		}
		out = append(out, Entry{Tenant: tenant, Name: name, Pointer: p})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing images of tenant %s in %s: %w", tenant, st, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Tenants lists the tenants that have images in st.
func Tenants(ctx context.Context, st store.Store) ([]string, error) {
	var out []string
	err := st.ListDirs(ctx, store.TenantsPrefix(), func(name string) error {
		out = append(out, name)
		return nil
	})
	return out, err
}

// Delete marks tenant's image name not live. Its manifest and chunks stay
// until the garbage collector stops copying them forward.
func Delete(ctx context.Context, st store.Store, tenant, name string) error {
	p, err := Lookup(ctx, st, tenant, name)
	if err != nil {
		return err
	}
	np := p
	np.Deleted = true
	if err := Swap(ctx, st, tenant, name, p, np); err != nil {
		return fmt.Errorf("deleting image %s of tenant %s: %w", name, tenant, err)
	}
	return nil
}

// Sharing describes how an image's chunks are shared with the other
// manifests of its root.
type Sharing struct {
	Chunks, Holes int
	Distinct      int // distinct non-hole chunks
	Shared        int // distinct chunks that at least one other manifest in the root also names
	Unique        int // Distinct - Shared
	OtherImages   int // other live images' manifests compared against
}

// Share compares m (the manifest p points to) with the manifest of every
// other live image in p's root, using only their public parts.
func Share(ctx context.Context, st store.Store, m *manifest.Manifest, p store.Pointer) (Sharing, error) {
	_, s, err := SharedChunks(ctx, st, m, p)
	return s, err
}

// SharedChunks is Share with the chunks themselves: shared[n] is true for
// each of m's chunks that another live image's manifest in p's root also
// names (the one definition of "shared" lode inspect and its heatmap use).
func SharedChunks(ctx context.Context, st store.Store, m *manifest.Manifest, p store.Pointer) (shared map[chunk.Name]bool, s Sharing, err error) {
	id := p.Manifest
	mine := make(map[chunk.Name]bool)
	s = Sharing{Chunks: len(m.Names)}
	for _, n := range m.Names {
		if n.IsZero() {
			s.Holes++
			continue
		}
		mine[n] = false
	}
	s.Distinct = len(mine)
	root := p.Root
	// Compare only with manifests that a live image points to: rebuilds and
	// recorded start profiles leave older manifests in the root until the
	// garbage collector retires it, and they would count as sharing.
	live, err := liveManifests(ctx, st, root)
	if err != nil {
		return nil, s, err
	}
	prefix := store.ManifestsPrefix(root)
	err = st.List(ctx, prefix, func(key string, _ int64) error {
		mid := strings.TrimPrefix(key, prefix)
		if mid == id || !live[mid] {
			return nil
		}
		b, err := st.Get(ctx, key, nil)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		other, err := manifest.ReadPublic(b)
		if err != nil {
			return fmt.Errorf("reading manifest %s: %w", key, err)
		}
		s.OtherImages++
		for _, n := range other.Names {
			if _, ok := mine[n]; ok {
				mine[n] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, s, fmt.Errorf("comparing with manifests of root %s: %w", root, err)
	}
	for _, shared := range mine {
		if shared {
			s.Shared++
		}
	}
	s.Unique = s.Distinct - s.Shared
	return mine, s, nil
}

// liveManifests returns the ids of the manifests in root that some tenant's
// live image points to.
func liveManifests(ctx context.Context, st store.Store, root store.RootID) (map[string]bool, error) {
	tenants, err := Tenants(ctx, st)
	if err != nil {
		return nil, fmt.Errorf("listing tenants in %s: %w", st, err)
	}
	live := map[string]bool{}
	for _, t := range tenants {
		if store.ValidName("tenant", t) != nil {
			continue
		}
		es, err := List(ctx, st, t, false)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			if e.Pointer.Root == root {
				live[e.Pointer.Manifest] = true
			}
		}
	}
	return live, nil
}
