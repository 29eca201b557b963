package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/store"
)

// CatalogImages finds lode images among one tenant's images through the
// catalog: by the source manifest digest and by the chain IDs of the
// source layers their manifests record (public parts only: no key is
// needed). Answers are kept for TTL, since containerd asks once per layer.
type CatalogImages struct {
	Store  store.Store
	Tenant string
	TTL    time.Duration // 0: 2s

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	im  Image
	err error
	at  time.Time
}

var _ Images = (*CatalogImages)(nil)

// BySource implements Images.
func (c *CatalogImages) BySource(ctx context.Context, d digest.Digest) (Image, error) {
	return c.lookup(ctx, "source "+d.String(), func() ([]catalog.SourceMatch, error) {
		return catalog.FindBySource(ctx, c.Store, c.Tenant, d.String())
	})
}

// ByChainID implements Images: an image whose whole layer stack has chain
// ID id.
func (c *CatalogImages) ByChainID(ctx context.Context, id digest.Digest) (Image, error) {
	return c.lookup(ctx, "chain "+id.String(), func() ([]catalog.SourceMatch, error) {
		ms, err := catalog.FindByChainID(ctx, c.Store, c.Tenant, id.String())
		var tops []catalog.SourceMatch
		for _, m := range ms {
			if m.Top() {
				tops = append(tops, m)
			}
		}
		if err == nil && len(tops) == 0 {
			err = fmt.Errorf("no image of tenant %s has chain %s as its top: %w", c.Tenant, id, catalog.ErrNoImage)
		}
		return tops, err
	})
}

func (c *CatalogImages) lookup(ctx context.Context, key string, find func() ([]catalog.SourceMatch, error)) (Image, error) {
	ttl := c.TTL
	if ttl == 0 {
		ttl = 2 * time.Second
	}
	c.mu.Lock()
	if e, ok := c.cache[key]; ok && time.Since(e.at) < ttl {
		c.mu.Unlock()
		return e.im, e.err
	}
	c.mu.Unlock()
	var im Image
	ms, err := find()
	switch {
	case errors.Is(err, catalog.ErrNoImage):
		err = fmt.Errorf("%w: %w", ErrUnknownImage, err)
	case err == nil:
		m := ms[0] // sorted by name
		im = Image{Tenant: c.Tenant, Name: m.Name, Source: digest.Digest(m.Manifest.SourceDigest)}
	default:
		return Image{}, err // not cached
	}
	c.mu.Lock()
	if c.cache == nil {
		c.cache = map[string]cached{}
	}
	for k, e := range c.cache {
		if time.Since(e.at) >= ttl {
			delete(c.cache, k)
		}
	}
	c.cache[key] = cached{im: im, err: err, at: time.Now()}
	c.mu.Unlock()
	return im, err
}
