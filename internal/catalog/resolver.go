package catalog

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
)

// ResolverConfig configures a Resolver. The zero value of a duration field
// takes its default; a negative PointerTTL re-reads the pointer at every
// Resolve.
type ResolverConfig struct {
	// PointerTTL is how long a pointer read from the store is used as it is
	// (default 1s).
	PointerTTL time.Duration
	// MaxStale is the age up to which an older pointer is still used while
	// one background read refreshes it (stale-while-revalidate); past it a
	// Resolve reads the pointer itself (default 30s).
	MaxStale time.Duration
	// ManifestBytes bounds the opened manifests kept, by their approximate
	// size in memory (default 256 MiB; a 10 GiB image's is about 1.3 MiB).
	ManifestBytes int64
	Now           func() time.Time // default time.Now
	Log           *slog.Logger     // default slog.Default()
}

// ResolverStats counts what Resolve did.
type ResolverStats struct {
	Resolves                   int64 // calls
	PointerReads, PointerStale int64 // pointers read from the store; stale pointers used while refreshing
	ManifestReads              int64 // manifests read from the store and opened
	StaleOnError               int64 // expired pointers used because re-reading failed
}

// Resolver resolves image names like Resolve, but does not read the store at
// every start. A worker that starts the same images again and again (a
// start storm is thousands per second of a few images) would otherwise send
// the origin two reads per start, the second one the whole manifest (1.3 MiB
// for a 10 GiB image), and open it again each time.
//
//   - Manifests are content-addressed (the pointer names the SHA-256 of the
//     sealed object), so an opened manifest is kept, keyed by tenant and id,
//     in an LRU bounded by bytes; it never goes stale. Keying by tenant keeps
//     tenants apart: a tenant whose pointer names another tenant's manifest
//     gets its own read and open, which fails with the other tenant's key.
//   - Pointers are mutable (a new build, a delete, the garbage collector
//     moving an image), so a pointer is reused for PointerTTL, then used
//     while a single background read refreshes it up to MaxStale, then read
//     again before use. A new build or a delete is therefore seen by new
//     starts within PointerTTL plus one start (at most MaxStale for an image
//     started rarely). When that read fails for any reason but "not found"
//     (the store is down), the old pointer is used and counted: starts go
//     on from the caches while the origin is out.
//   - Concurrent resolves of one pointer or one manifest share one read
//     (golang.org/x/sync/singleflight).
//
// The returned manifest is shared by every caller: it must not be modified.
type Resolver struct {
	st  store.Store
	kr  manifest.Keyring
	cfg ResolverConfig

	group singleflight.Group

	mu        sync.Mutex
	pointers  map[string]*cachedPointer // by tenant "/" name
	manifests map[string]*list.Element  // by tenant "/" id; values *cachedManifest
	lru       list.List                 // front: most recently used
	bytes     int64
	stats     ResolverStats
}

type cachedPointer struct {
	p          store.Pointer
	at         time.Time // when it was read
	refreshing bool
}

type cachedManifest struct {
	key  string
	m    *manifest.Manifest
	size int64
}

// NewResolver returns a caching resolver over st.
func NewResolver(st store.Store, kr manifest.Keyring, cfg ResolverConfig) *Resolver {
	if cfg.PointerTTL == 0 {
		cfg.PointerTTL = time.Second
	}
	if cfg.MaxStale == 0 {
		cfg.MaxStale = 30 * time.Second
	}
	if cfg.MaxStale < cfg.PointerTTL {
		cfg.MaxStale = cfg.PointerTTL
	}
	if cfg.ManifestBytes <= 0 {
		cfg.ManifestBytes = 256 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Resolver{st: st, kr: kr, cfg: cfg, pointers: map[string]*cachedPointer{}, manifests: map[string]*list.Element{}}
}

// Stats returns the counts so far.
func (r *Resolver) Stats() ResolverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Resolve returns the opened manifest of tenant's image name and its
// pointer, with the errors of Resolve (ErrNoImage for a missing or deleted
// image).
func (r *Resolver) Resolve(ctx context.Context, tenant, name string) (*manifest.Manifest, store.Pointer, error) {
	r.mu.Lock()
	r.stats.Resolves++
	r.mu.Unlock()
	p, err := r.pointer(ctx, tenant, name)
	if err != nil {
		return nil, p, err
	}
	if p.Deleted {
		return nil, p, fmt.Errorf("image %s of tenant %s was deleted: %w", name, tenant, ErrNoImage)
	}
	m, err := r.manifest(ctx, tenant, name, p)
	return m, p, err
}

func (r *Resolver) pointer(ctx context.Context, tenant, name string) (store.Pointer, error) {
	key := tenant + "/" + name
	now := r.cfg.Now()
	r.mu.Lock()
	c := r.pointers[key]
	if c != nil && r.cfg.PointerTTL > 0 {
		age := now.Sub(c.at)
		if age < r.cfg.PointerTTL {
			p := c.p
			r.mu.Unlock()
			return p, nil
		}
		if age < r.cfg.MaxStale {
			p := c.p
			r.stats.PointerStale++
			if !c.refreshing {
				c.refreshing = true
				go r.refresh(tenant, name, c)
			}
			r.mu.Unlock()
			return p, nil
		}
	}
	r.mu.Unlock()

	v, err, _ := r.group.Do("p "+key, func() (any, error) { return r.readPointer(ctx, tenant, name) })
	if err == nil {
		return v.(store.Pointer), nil
	}
	if c != nil && !errors.Is(err, ErrNoImage) && ctx.Err() == nil {
		r.mu.Lock()
		r.stats.StaleOnError++
		r.mu.Unlock()
		r.cfg.Log.Warn("re-reading an image pointer failed; using the one read before", slog.String("image", key),
			slog.Duration("age", now.Sub(c.at)), slog.Any("err", err))
		return c.p, nil
	}
	return store.Pointer{}, err
}

// refresh re-reads c's pointer in the background (stale-while-revalidate).
func (r *Resolver) refresh(tenant, name string, c *cachedPointer) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.MaxStale)
	defer cancel()
	_, err, _ := r.group.Do("p "+tenant+"/"+name, func() (any, error) { return r.readPointer(ctx, tenant, name) })
	r.mu.Lock()
	c.refreshing = false
	r.mu.Unlock()
	if err != nil && !errors.Is(err, ErrNoImage) {
		r.cfg.Log.Warn("refreshing an image pointer", slog.String("image", tenant+"/"+name), slog.Any("err", err))
	}
}

// readPointer reads the pointer from the store and caches it; a missing
// image is forgotten.
func (r *Resolver) readPointer(ctx context.Context, tenant, name string) (store.Pointer, error) {
	p, err := Lookup(ctx, r.st, tenant, name)
	key := tenant + "/" + name
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.PointerReads++
	switch {
	case err == nil:
		r.pointers[key] = &cachedPointer{p: p, at: r.cfg.Now()}
	case errors.Is(err, ErrNoImage):
		delete(r.pointers, key)
	}
	return p, err
}

func (r *Resolver) manifest(ctx context.Context, tenant, name string, p store.Pointer) (*manifest.Manifest, error) {
	// The image name is part of the key: a manifest sealed under a KMS key
	// opens only under the name it was sealed for (issue #19), so another
	// name pointing at the same manifest must not skip that check.
	key := tenant + "/" + p.Manifest + "/" + name
	r.mu.Lock()
	if e := r.manifests[key]; e != nil {
		r.lru.MoveToFront(e)
		m := e.Value.(*cachedManifest).m
		r.mu.Unlock()
		return m, nil
	}
	r.mu.Unlock()
	v, err, _ := r.group.Do("m "+key, func() (any, error) {
		// A flight for key may have ended between the look-up above and
		// this one starting: use what it kept rather than read again.
		r.mu.Lock()
		if e := r.manifests[key]; e != nil {
			m := e.Value.(*cachedManifest).m
			r.mu.Unlock()
			return m, nil
		}
		r.mu.Unlock()
		m, err := openManifest(ctx, r.st, r.kr, tenant, name, p)
		if err != nil {
			return nil, err
		}
		r.keep(key, m)
		return m, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*manifest.Manifest), nil
}

// keep adds an opened manifest to the LRU and evicts past the budget. A
// manifest larger than the whole budget is not kept.
func (r *Resolver) keep(key string, m *manifest.Manifest) {
	size := manifestSize(m)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.ManifestReads++
	if size > r.cfg.ManifestBytes || r.manifests[key] != nil {
		return
	}
	r.manifests[key] = r.lru.PushFront(&cachedManifest{key: key, m: m, size: size})
	r.bytes += size
	for r.bytes > r.cfg.ManifestBytes {
		e := r.lru.Back()
		cm := e.Value.(*cachedManifest)
		r.lru.Remove(e)
		delete(r.manifests, cm.key)
		r.bytes -= cm.size
	}
}

// manifestSize approximates an opened manifest's memory.
func manifestSize(m *manifest.Manifest) int64 {
	n := int64(len(m.Names))*int64(len(chunk.Name{})+len(chunk.Key{})) + int64(len(m.Hints))*4 + 512
	for _, ss := range [][]string{m.Config.Entrypoint, m.Config.Cmd, m.Config.Env} {
		for _, s := range ss {
			n += int64(len(s)) + 16
		}
	}
	return n
}
