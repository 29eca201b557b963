package agent

import (
	"container/list"
	"sync"

	"github.com/lode-dev/lode/internal/chunk"
)

// MemCache is a bounded-bytes LRU of opened (plaintext) chunks, shared by
// every image on a worker. It is safe for concurrent use.
//
// Entries are keyed by the whole chunk.Ref (name and key), not the name
// alone: a reader that knows a chunk's public name but not its key must not
// get its plaintext from the cache.
//
// The slices it hands out are shared and must not be modified. Eviction only
// drops the cache's reference, so a slice stays valid for whoever holds it.
type MemCache struct {
	max int64

	mu    sync.Mutex
	bytes int64
	lru   list.List // of *memEntry, most recent at the front
	idx   map[chunk.Ref]*list.Element
}

type memEntry struct {
	ref   chunk.Ref
	plain []byte
}

// NewMemCache returns a cache holding at most maxBytes of plaintext. A chunk
// larger than maxBytes is never cached.
func NewMemCache(maxBytes int64) *MemCache {
	return &MemCache{max: maxBytes, idx: make(map[chunk.Ref]*list.Element)}
}

// Get returns the plaintext of ref and marks it recently used.
func (c *MemCache) Get(ref chunk.Ref) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.idx[ref]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*memEntry).plain, true
}

// Contains reports whether ref is cached without marking it used.
func (c *MemCache) Contains(ref chunk.Ref) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.idx[ref]
	return ok
}

// Put caches plain as the plaintext of ref, evicting least recently used
// chunks until the cache is within its budget. The cache keeps plain; the
// caller must not modify it afterwards.
func (c *MemCache) Put(ref chunk.Ref, plain []byte) {
	size := int64(len(plain))
	if size > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.idx[ref]; ok {
		c.lru.MoveToFront(e)
		return
	}
	for c.bytes+size > c.max {
		back := c.lru.Back()
		old := back.Value.(*memEntry)
		c.lru.Remove(back)
		delete(c.idx, old.ref)
		c.bytes -= int64(len(old.plain))
	}
	c.idx[ref] = c.lru.PushFront(&memEntry{ref: ref, plain: plain})
	c.bytes += size
}

// Bytes returns the plaintext bytes held.
func (c *MemCache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Len returns the number of chunks held.
func (c *MemCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idx)
}
