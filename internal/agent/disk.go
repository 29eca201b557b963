package agent

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// DiskCache is the L1 disk tier: ciphertext of chunks in files under one
// directory, shared by every image on the worker, bounded by a byte budget
// with least-recently-used eviction.
//
// Layout: <dir>/<first two hex digits of the name>/<name>. Writes go to a
// temporary file in <dir> and are renamed into place, so a reader never sees
// a torn file. Recency is tracked in memory; on start the directory is
// scanned and the index rebuilt in modification-time order (the write order),
// so the cache survives restarts. Fetch does not verify what it reads: the
// agent verifies every tier's bytes (chunk.Open: name, then GCM tag) before
// use, and a second SHA-256 on the hot path of warm reads cost a third of
// their CPU. A corrupt file is reported by the agent as a verification
// failure of the disk tier, and replaced by the Fill of the good bytes it
// then fetches from a slower tier. Fill verifies what it stores.
type DiskCache struct {
	dir string
	max int64
	log *slog.Logger

	mu    sync.Mutex
	bytes int64
	lru   list.List // of *diskEntry, most recent at the front
	idx   map[chunk.Name]*list.Element
}

type diskEntry struct {
	name chunk.Name
	size int64
}

var _ Tier = (*DiskCache)(nil)

const tmpPrefix = ".tmp-"

// NewDiskCache opens (creating if needed) the disk cache in dir, holding at
// most maxBytes of ciphertext. log may be nil.
func NewDiskCache(dir string, maxBytes int64, log *slog.Logger) (*DiskCache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("opening disk cache %s: byte budget %d must be positive", dir, maxBytes)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening disk cache %s: %w", dir, err)
	}
	c := &DiskCache{dir: dir, max: maxBytes, log: log.With(slog.String("component", "diskcache")), idx: make(map[chunk.Name]*list.Element)}
	if err := c.scan(); err != nil {
		return nil, fmt.Errorf("opening disk cache %s: %w", dir, err)
	}
	return c, nil
}

// scan rebuilds the index from the files present, oldest first, removes
// leftover temporary files and anything that is not a chunk file, and
// evicts down to the budget.
func (c *DiskCache) scan() error {
	type found struct {
		name  chunk.Name
		size  int64
		mtime time.Time
	}
	var files []found
	top, err := os.ReadDir(c.dir)
	if err != nil {
		return err
	}
	for _, d := range top {
		p := filepath.Join(c.dir, d.Name())
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			os.Remove(p)
			continue
		}
		if !d.IsDir() || len(d.Name()) != 2 {
			continue
		}
		sub, err := os.ReadDir(p)
		if err != nil {
			return err
		}
		for _, f := range sub {
			n, err := chunk.ParseName(f.Name())
			if err != nil || !f.Type().IsRegular() || n.String()[:2] != d.Name() {
				continue
			}
			info, err := f.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return err
			}
			files = append(files, found{name: n, size: info.Size(), mtime: info.ModTime()})
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].mtime.Before(files[j].mtime) })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range files {
		c.idx[f.name] = c.lru.PushFront(&diskEntry{name: f.name, size: f.size})
		c.bytes += f.size
	}
	c.evictLocked(0)
	return nil
}

func (c *DiskCache) path(n chunk.Name) string {
	s := n.String()
	return filepath.Join(c.dir, s[:2], s)
}

// Name returns "disk".
func (c *DiskCache) Name() string { return "disk" }

// Fetch reads chunk n's ciphertext into dst[:0], unverified (see DiskCache).
// A chunk not in the cache, or whose file has vanished, wraps
// store.ErrNotFound.
func (c *DiskCache) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	e, ok := c.idx[n]
	if ok {
		c.lru.MoveToFront(e)
	}
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("reading chunk %s from disk cache %s: %w", n, c.dir, store.ErrNotFound)
	}
	b, err := c.read(n, dst)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			c.forget(n)
			return nil, fmt.Errorf("reading chunk %s from disk cache %s: %w", n, c.dir, store.ErrNotFound)
		}
		return nil, fmt.Errorf("reading chunk %s from disk cache %s: %w", n, c.dir, err)
	}
	// No hash check here: the agent verifies every tier's bytes with
	// chunk.Open (name, then GCM tag) before use, and hashing twice on the
	// hot path of warm reads cost a third of their CPU. A corrupt file is
	// therefore reported by the agent as a verification failure of the
	// disk tier, and healed by the Fill of the good bytes that follows.
	return b, nil
}

func (c *DiskCache) read(n chunk.Name, dst []byte) ([]byte, error) {
	f, err := os.Open(c.path(n))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := int(info.Size())
	if cap(dst) < size {
		dst = make([]byte, size)
	}
	dst = dst[:size]
	if _, err := io.ReadFull(f, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// Fill stores ciphertext as chunk n after verifying it, evicting least
// recently used chunks to stay within the budget. A chunk already present is
// only marked used.
func (c *DiskCache) Fill(ctx context.Context, n chunk.Name, ciphertext []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	size := int64(len(ciphertext))
	if size > c.max {
		return nil
	}
	// A Fill of a chunk the cache already indexes happens when the agent
	// fetched it from a slower tier although this one had it: the file
	// failed verification (or was being written concurrently). Either way
	// the verified bytes replace it below.
	if err := chunk.Verify(n, ciphertext); err != nil {
		return fmt.Errorf("filling disk cache %s: %w", c.dir, err)
	}
	tmp, err := os.CreateTemp(c.dir, tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("filling chunk %s into disk cache %s: %w", n, c.dir, err)
	}
	_, werr := tmp.Write(ciphertext)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("filling chunk %s into disk cache %s: %w", n, c.dir, err)
	}
	final := c.path(n)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("filling chunk %s into disk cache %s: %w", n, c.dir, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.Rename(tmp.Name(), final); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("filling chunk %s into disk cache %s: %w", n, c.dir, err)
	}
	if e, ok := c.idx[n]; ok { // replaced a corrupt file, or a concurrent Fill's identical one
		c.lru.MoveToFront(e)
		c.bytes += size - e.Value.(*diskEntry).size
		e.Value.(*diskEntry).size = size
		return nil
	}
	c.evictLocked(size)
	c.idx[n] = c.lru.PushFront(&diskEntry{name: n, size: size})
	c.bytes += size
	return nil
}

// evictLocked removes least recently used files until room more bytes fit.
func (c *DiskCache) evictLocked(room int64) {
	for c.bytes+room > c.max && c.lru.Len() > 0 {
		back := c.lru.Back()
		e := back.Value.(*diskEntry)
		c.lru.Remove(back)
		delete(c.idx, e.name)
		c.bytes -= e.size
		if err := os.Remove(c.path(e.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("evicting chunk file", slog.String("chunk", e.name.String()), slog.Any("err", err))
		}
	}
}

func (c *DiskCache) forget(n chunk.Name) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgetLocked(n)
}

func (c *DiskCache) forgetLocked(n chunk.Name) {
	if e, ok := c.idx[n]; ok {
		c.lru.Remove(e)
		delete(c.idx, n)
		c.bytes -= e.Value.(*diskEntry).size
	}
}

// Has reports whether chunk n is in the cache, without marking it used.
func (c *DiskCache) Has(n chunk.Name) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.idx[n]
	return ok
}

// Bytes returns the ciphertext bytes held.
func (c *DiskCache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Len returns the number of chunks held.
func (c *DiskCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idx)
}

// TempFile is a disk cache's temporary file: a write that a crash cut off.
type TempFile struct {
	Path    string
	Size    int64
	ModTime time.Time
}

// StaleTemps lists the temporary files of the disk cache in dir older than
// minAge at now (younger ones may be writes in flight), for lode doctor.
func StaleTemps(dir string, now time.Time, minAge time.Duration) []TempFile {
	ms, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*"))
	var out []TempFile
	for _, p := range ms {
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || now.Sub(fi.ModTime()) < minAge {
			continue
		}
		out = append(out, TempFile{Path: p, Size: fi.Size(), ModTime: fi.ModTime()})
	}
	return out
}
