package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// SourceMatch is an image of a tenant found by its source.
type SourceMatch struct {
	Entry
	// Manifest is the public part of the image's manifest (no keys, no
	// config): its source fields say what matched.
	Manifest *manifest.Manifest
	// Layers is how many source layers (base first) the matched chain ID
	// covers; len(Manifest.DiffIDs) when it names the whole image. Zero for
	// a match by manifest digest.
	Layers int
}

// Top reports whether the match covers the image's whole layer stack (or
// was found by its manifest digest).
func (m SourceMatch) Top() bool { return m.Layers == 0 || m.Layers == len(m.Manifest.DiffIDs) }

// FindBySource returns tenant's live images built from the source image
// whose manifest digest is manifestDigest ("sha256:…"), sorted by name. An
// image built from an index matches by the platform manifest's digest (its
// SourceDigest), not the index's. None found is ErrNoImage.
//
// It reads the public part of every live image's manifest: one List and one
// Get per image. That is fine for a snapshotter's Prepare of a few hundred
// images per tenant; a larger catalog wants an index kept by build.
func FindBySource(ctx context.Context, st store.Store, tenant, manifestDigest string) ([]SourceMatch, error) {
	return find(ctx, st, tenant, "source manifest digest "+manifestDigest, func(m *manifest.Manifest) (int, bool) {
		return 0, manifestDigest != "" && m.SourceDigest == manifestDigest
	})
}

// FindByChainID returns tenant's live images whose source layers have the
// chain ID chainID (manifest.ChainIDs) at some depth, sorted by name; each
// match says how many layers the chain covers (SourceMatch.Layers, Top). A
// containerd snapshotter asks this for the key of each layer it prepares.
// None found is ErrNoImage. Same cost as FindBySource.
func FindByChainID(ctx context.Context, st store.Store, tenant, chainID string) ([]SourceMatch, error) {
	return find(ctx, st, tenant, "chain ID "+chainID, func(m *manifest.Manifest) (int, bool) {
		for i, c := range m.ChainIDs() {
			if c == chainID {
				return i + 1, true
			}
		}
		return 0, false
	})
}

func find(ctx context.Context, st store.Store, tenant, what string, match func(*manifest.Manifest) (int, bool)) ([]SourceMatch, error) {
	es, err := List(ctx, st, tenant, false)
	if err != nil {
		return nil, err
	}
	var out []SourceMatch
	for _, e := range es {
		m, err := ReadPublic(ctx, st, e.Pointer)
		if errors.Is(err, store.ErrNotFound) {
			continue // repointed or collected while we listed
		}
		if err != nil {
			return nil, fmt.Errorf("finding image of tenant %s by %s: image %s: %w", tenant, what, e.Name, err)
		}
		if n, ok := match(m); ok {
			out = append(out, SourceMatch{Entry: e, Manifest: m, Layers: n})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("image of tenant %s with %s in %s: %w", tenant, what, st, ErrNoImage)
	}
	return out, nil
}

// ReadPublic reads the manifest p names, checks that it hashes to its id,
// and returns its public part (no key needed; see manifest.ReadPublic).
func ReadPublic(ctx context.Context, st store.Store, p store.Pointer) (*manifest.Manifest, error) {
	key := store.ManifestKey(p.Root, p.Manifest)
	sealed, err := st.Get(ctx, key, nil)
	if err != nil {
		return nil, fmt.Errorf("reading manifest %s: %w", key, err)
	}
	if got := manifest.ID(sealed); got != p.Manifest {
		return nil, fmt.Errorf("manifest %s hashes to %s: %w", key, got, manifest.ErrCorrupt)
	}
	return manifest.ReadPublic(sealed)
}
