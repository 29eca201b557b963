package mem

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/lode-dev/lode/internal/store"
)

// Store is an in-memory store.Store. The zero value is not usable; call New
// or Open.
type Store struct {
	name string
	mu   sync.RWMutex
	objs map[string][]byte // values are never modified after insertion
}

var _ store.Store = (*Store)(nil)

// New returns an empty, unnamed store.
func New() *Store { return &Store{name: "mem://", objs: make(map[string][]byte)} }

var (
	namedMu sync.Mutex
	named   = map[string]*Store{}
)

// Open returns the process-wide store called name, creating it empty on
// first use: every Open with the same name returns the same store.
func Open(name string) *Store {
	namedMu.Lock()
	defer namedMu.Unlock()
	s, ok := named[name]
	if !ok {
		s = &Store{name: "mem://" + name, objs: make(map[string][]byte)}
		named[name] = s
	}
	return s
}

func (s *Store) String() string { return s.name }

func (s *Store) check(ctx context.Context, verb, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s in %s: %w", verb, key, s.name, err)
	}
	if err := store.ValidKey(key); err != nil {
		return fmt.Errorf("%s in %s: %w", verb, s.name, err)
	}
	return nil
}

func (s *Store) lookup(ctx context.Context, verb, key string) ([]byte, error) {
	if err := s.check(ctx, verb, key); err != nil {
		return nil, err
	}
	s.mu.RLock()
	b, ok := s.objs[key]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%s %s in %s: %w", verb, key, s.name, store.ErrNotFound)
	}
	return b, nil
}

// Get returns a copy of key's bytes, appended to dst[:0].
func (s *Store) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	b, err := s.lookup(ctx, "getting", key)
	if err != nil {
		return nil, err
	}
	return append(dst[:0], b...), nil
}

// GetRange returns a copy of up to n bytes of key from off.
func (s *Store) GetRange(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("getting %s [%d, +%d) in %s: negative offset or length", key, off, n, s.name)
	}
	b, err := s.lookup(ctx, "getting", key)
	if err != nil {
		return nil, err
	}
	size := int64(len(b))
	if off >= size {
		return dst[:0], nil
	}
	return append(dst[:0], b[off:min(size, off+n)]...), nil
}

// Put stores a copy of data under key.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	if err := s.check(ctx, "putting", key); err != nil {
		return err
	}
	b := append([]byte(nil), data...)
	s.mu.Lock()
	s.objs[key] = b
	s.mu.Unlock()
	return nil
}

// PutIfAbsent stores a copy of data under key unless key exists.
func (s *Store) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	if err := s.check(ctx, "putting", key); err != nil {
		return err
	}
	b := append([]byte(nil), data...)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.objs[key]; ok {
		return fmt.Errorf("putting %s in %s: %w", key, s.name, store.ErrExists)
	}
	s.objs[key] = b
	return nil
}

// CompareAndSwap sets key to data (nil: deletes it) if its object equals
// old (nil: absent), under the store's mutex (store.Swapper).
func (s *Store) CompareAndSwap(ctx context.Context, key string, old, data []byte) error {
	if err := s.check(ctx, "swapping", key); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.objs[key]
	if ok != (old != nil) || ok && !bytes.Equal(cur, old) {
		return fmt.Errorf("swapping %s in %s: %w", key, s.name, store.ErrChanged)
	}
	if data == nil {
		delete(s.objs, key)
	} else {
		s.objs[key] = append([]byte(nil), data...)
	}
	return nil
}

// Stat returns the size of key.
func (s *Store) Stat(ctx context.Context, key string) (int64, error) {
	b, err := s.lookup(ctx, "statting", key)
	if err != nil {
		return 0, err
	}
	return int64(len(b)), nil
}

type entry struct {
	key  string
	size int64
}

// List calls fn for every key with prefix, in lexical order, over a
// snapshot taken when List starts.
func (s *Store) List(ctx context.Context, prefix string, fn func(key string, size int64) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("listing %q in %s: %w", prefix, s.name, err)
	}
	if err := store.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("listing in %s: %w", s.name, err)
	}
	s.mu.RLock()
	var es []entry
	for k, b := range s.objs {
		if strings.HasPrefix(k, prefix) {
			es = append(es, entry{k, int64(len(b))})
		}
	}
	s.mu.RUnlock()
	sort.Slice(es, func(i, j int) bool { return es[i].key < es[j].key })
	for _, e := range es {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("listing %q in %s: %w", prefix, s.name, err)
		}
		if err := fn(e.key, e.size); err != nil {
			return err
		}
	}
	return nil
}

// ListDirs calls fn with each immediate directory name below prefix, in the
// order of the keys below them (name+"/"), as S3 orders common prefixes.
func (s *Store) ListDirs(ctx context.Context, prefix string, fn func(name string) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("listing directories %q in %s: %w", prefix, s.name, err)
	}
	if err := store.ValidDirPrefix(prefix); err != nil {
		return fmt.Errorf("listing directories in %s: %w", s.name, err)
	}
	seen := map[string]bool{}
	s.mu.RLock()
	for k := range s.objs {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seen[rest[:i+1]] = true
		}
	}
	s.mu.RUnlock()
	dirs := make([]string, 0, len(seen))
	for d := range seen {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if err := fn(strings.TrimSuffix(d, "/")); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes key; a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.check(ctx, "deleting", key); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.objs, key)
	s.mu.Unlock()
	return nil
}
