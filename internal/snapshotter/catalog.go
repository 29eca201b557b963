package snapshotter

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// CatalogImages finds lode images among one tenant's images by the source
// digest their manifests record (for an image built from an OCI layout or
// a registry, its manifest digest). It reads the manifests of the tenant's
// images at most once per TTL.
//
// TODO(#17): use the catalog's lookups by source manifest digest and by
// chain ID once the registry source records them; ByChainID answers
// ErrUnknownImage until then (a shared chain is then materialized rather
// than promoted).
type CatalogImages struct {
	Store   store.Store
	Keyring manifest.Keyring
	Tenant  string
	TTL     time.Duration // 0: 2s
	Log     *slog.Logger

	mu      sync.Mutex
	scanned time.Time
	sources map[digest.Digest]Image
}

var _ Images = (*CatalogImages)(nil)

// BySource implements Images.
func (c *CatalogImages) BySource(ctx context.Context, d digest.Digest) (Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ttl := c.TTL
	if ttl == 0 {
		ttl = 2 * time.Second
	}
	if c.sources == nil || time.Since(c.scanned) >= ttl {
		if err := c.scan(ctx); err != nil {
			return Image{}, err
		}
	}
	if im, ok := c.sources[d]; ok {
		return im, nil
	}
	return Image{}, fmt.Errorf("no image of tenant %s was built from manifest %s: %w", c.Tenant, d, ErrUnknownImage)
}

func (c *CatalogImages) scan(ctx context.Context) error {
	es, err := catalog.List(ctx, c.Store, c.Tenant, false)
	if err != nil {
		return fmt.Errorf("listing the images of tenant %s: %w", c.Tenant, err)
	}
	src := map[digest.Digest]Image{}
	for _, e := range es {
		m, _, err := catalog.Resolve(ctx, c.Store, c.Keyring, c.Tenant, e.Name)
		if err != nil {
			if c.Log != nil {
				c.Log.Warn("reading an image's manifest to match containerd's images", slog.String("image", c.Tenant+"/"+e.Name), slog.Any("err", err))
			}
			continue
		}
		d := digest.Digest(m.SourceDigest)
		if d.Validate() != nil {
			continue
		}
		src[d] = Image{Tenant: c.Tenant, Name: e.Name, Source: d}
	}
	c.sources, c.scanned = src, time.Now()
	return nil
}

// ByChainID implements Images: not known yet (see the type's doc).
func (c *CatalogImages) ByChainID(ctx context.Context, id digest.Digest) (Image, error) {
	return Image{}, fmt.Errorf("chain %s: lookups by chain ID need the registry source's layer records: %w", id, ErrUnknownImage)
}
