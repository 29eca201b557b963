package file

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/lode-dev/lode/internal/store"
	"golang.org/x/sys/unix"
)

// tmpPrefix begins the name of every temporary file; keys may not use it.
const tmpPrefix = ".lode-tmp-"

// Store is a store.Store over a directory.
type Store struct {
	root string // absolute, cleaned
	// write writes data to a temporary file; tests replace it to inject a
	// failure midway (a full disk).
	write func(f *os.File, data []byte) error
}

var _ store.Store = (*Store)(nil)

// New returns a store rooted at dir. Nothing is created until the first
// write; reads of a missing dir find no objects.
func New(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("opening file store: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("opening file store %s: %w", dir, err)
	}
	return &Store{root: abs, write: writeAll}, nil
}

func writeAll(f *os.File, data []byte) error {
	_, err := f.Write(data)
	return err
}

// Dir returns the store's root directory.
func (s *Store) Dir() string { return s.root }

// LocalDisk reports that the store is a directory on this machine: its
// reads are bandwidth-bound, not latency-bound (the worker bounds its
// prefetch by it).
func (s *Store) LocalDisk() bool { return true }

func (s *Store) String() string { return "file://" + s.root }

// path checks ctx and key and returns the key's file name.
func (s *Store) path(ctx context.Context, verb, key string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s %s in %s: %w", verb, key, s, err)
	}
	if err := validKey(key); err != nil {
		return "", fmt.Errorf("%s in %s: %w", verb, s, err)
	}
	return filepath.Join(s.root, filepath.FromSlash(key)), nil
}

func validKey(key string) error {
	if err := store.ValidKey(key); err != nil {
		return err
	}
	if strings.HasPrefix(key, tmpPrefix) || strings.Contains(key, "/"+tmpPrefix) {
		return fmt.Errorf("key %q: segments beginning %q are reserved: %w", key, tmpPrefix, store.ErrInvalidKey)
	}
	return nil
}

// notFound reports whether err from opening or statting a key's path means
// there is no object: the path is missing, or an ancestor is a file.
func notFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// open opens key for reading and returns the file and its size. A
// directory is not an object.
func (s *Store) open(ctx context.Context, key string) (*os.File, int64, error) {
	p, err := s.path(ctx, "getting", key)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if notFound(err) {
		return nil, 0, fmt.Errorf("getting %s from %s: %w", key, s, store.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("getting %s from %s: %w", key, s, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("getting %s from %s: %w", key, s, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("getting %s from %s: not a regular file: %w", key, s, store.ErrNotFound)
	}
	return f, fi.Size(), nil
}

// Get reads the whole of key. The file is read through one descriptor, so
// a concurrent replacement (a rename) cannot tear it.
func (s *Store) Get(ctx context.Context, key string, dst []byte) ([]byte, error) {
	f, size, err := s.open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := grow(dst, int(size))
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("getting %s from %s: reading %d bytes: %w", key, s, size, err)
	}
	return buf, nil
}

// GetRange reads up to n bytes of key from off.
func (s *Store) GetRange(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, error) {
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("getting %s [%d, +%d) from %s: negative offset or length", key, off, n, s)
	}
	f, size, err := s.open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if off >= size {
		return dst[:0], nil
	}
	buf := grow(dst, int(min(n, size-off)))
	if _, err := f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("getting %s [%d, +%d) from %s: %w", key, off, len(buf), s, err)
	}
	return buf, nil
}

// grow returns dst[:n], reusing dst when it has room.
func grow(dst []byte, n int) []byte {
	if cap(dst) >= n {
		return dst[:n]
	}
	return make([]byte, n)
}

// Put writes key atomically: temp file, fsync, rename, fsync of the
// directory.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	return s.put(ctx, key, data, false)
}

// PutIfAbsent writes key unless it exists, by hard-linking a complete
// temporary file to the key's name: link(2) fails with EEXIST if another
// writer got there first.
func (s *Store) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	return s.put(ctx, key, data, true)
}

func (s *Store) put(ctx context.Context, key string, data []byte, ifAbsent bool) (err error) {
	p, err := s.path(ctx, "putting", key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if ifAbsent {
		// Cheap early answer for the common case of a chunk already stored;
		// the link below is the authoritative check.
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("putting %s in %s: %w", key, s, store.ErrExists)
		}
	}
	tmp, err := s.createTemp(dir)
	if err != nil {
		return fmt.Errorf("putting %s in %s: %w", key, s, err)
	}
	name := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		os.Remove(name) // after rename or link, or on failure; the key is unaffected
	}()
	if err := s.write(tmp, data); err != nil {
		return fmt.Errorf("putting %s in %s: writing: %w", key, s, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("putting %s in %s: syncing: %w", key, s, err)
	}
	err = tmp.Close()
	tmp = nil
	if err != nil {
		return fmt.Errorf("putting %s in %s: closing: %w", key, s, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("putting %s in %s: %w", key, s, err)
	}
	if ifAbsent {
		err = os.Link(name, p)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("putting %s in %s: %w", key, s, store.ErrExists)
		}
	} else {
		err = os.Rename(name, p)
	}
	if err != nil {
		// EISDIR, ENOTDIR, EEXIST on a directory: the key is taken by a
		// directory of other keys, or an ancestor by an object.
		return fmt.Errorf("putting %s in %s: %w", key, s, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("putting %s in %s: syncing directory: %w", key, s, err)
	}
	return nil
}

// CompareAndSwap sets key to data (nil: deletes it) if its object equals
// old (nil: absent) (store.Swapper). Swaps hold an exclusive flock on the
// store's directory while they read, compare and write, so they are atomic
// against each other in every process that shares the directory.
func (s *Store) CompareAndSwap(ctx context.Context, key string, old, data []byte) error {
	if _, err := s.path(ctx, "swapping", key); err != nil {
		return err
	}
	if err := os.MkdirAll(s.root, 0o755); err != nil {
		return fmt.Errorf("swapping %s in %s: %w", key, s, err)
	}
	d, err := os.Open(s.root)
	if err != nil {
		return fmt.Errorf("swapping %s in %s: %w", key, s, err)
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("swapping %s in %s: locking: %w", key, s, err)
	}
	defer unix.Flock(int(d.Fd()), unix.LOCK_UN)
	cur, err := s.Get(ctx, key, nil)
	switch {
	case errors.Is(err, store.ErrNotFound):
		cur = nil
	case err != nil:
		return fmt.Errorf("swapping %s: %w", key, err)
	}
	if (cur != nil) != (old != nil) || cur != nil && !bytes.Equal(cur, old) {
		return fmt.Errorf("swapping %s in %s: %w", key, s, store.ErrChanged)
	}
	if data == nil {
		return s.Delete(ctx, key)
	}
	return s.put(ctx, key, data, false)
}

// createTemp creates a temporary file in dir, creating dir first. A
// concurrent Delete may remove an empty dir between the two steps, so a
// missing dir is retried.
func (s *Store) createTemp(dir string) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		f, err := os.CreateTemp(dir, tmpPrefix+"*")
		if err == nil || !errors.Is(err, fs.ErrNotExist) || attempt == 10 {
			return f, err
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Stat returns the size of key.
func (s *Store) Stat(ctx context.Context, key string) (int64, error) {
	p, err := s.path(ctx, "statting", key)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if notFound(err) || err == nil && !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("statting %s in %s: %w", key, s, store.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("statting %s in %s: %w", key, s, err)
	}
	return fi.Size(), nil
}

// Delete removes key, then each ancestor directory it leaves empty (up to,
// not including, the root), so ListDirs matches S3, where a directory
// exists only while keys are below it.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(ctx, "deleting", key)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(p)
	if notFound(err) || err == nil && fi.IsDir() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("deleting %s from %s: %w", key, s, err)
	}
	if err := os.Remove(p); err != nil && !notFound(err) {
		return fmt.Errorf("deleting %s from %s: %w", key, s, err)
	}
	for dir := filepath.Dir(p); dir != s.root && strings.HasPrefix(dir, s.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil { // not empty, or already gone: stop
			break
		}
	}
	return nil
}

// entry is a directory entry in key order: a directory sorts as name+"/",
// so "a.b" < "a/…" < "a0" as the keys themselves do.
type entry struct {
	name  string
	isDir bool
}

func (e entry) sortKey() string {
	if e.isDir {
		return e.name + "/"
	}
	return e.name
}

// readDir returns dir's entries in key order, without temporary files and
// other non-regular files. A missing dir has no entries.
func readDir(dir string) ([]entry, error) {
	des, err := os.ReadDir(dir)
	if notFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	es := make([]entry, 0, len(des))
	for _, de := range des {
		if strings.HasPrefix(de.Name(), tmpPrefix) || !de.IsDir() && !de.Type().IsRegular() {
			continue
		}
		es = append(es, entry{de.Name(), de.IsDir()})
	}
	slices.SortFunc(es, func(a, b entry) int { return cmp.Compare(a.sortKey(), b.sortKey()) })
	return es, nil
}

// List walks the directory of prefix depth-first in key order.
func (s *Store) List(ctx context.Context, prefix string, fn func(key string, size int64) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("listing %q in %s: %w", prefix, s, err)
	}
	if err := store.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("listing in %s: %w", s, err)
	}
	dirKey := prefix[:strings.LastIndexByte(prefix, '/')+1] // "" or ends in "/"
	return s.walk(ctx, dirKey, prefix[len(dirKey):], fn)
}

// walk lists the keys below directory dirKey whose name within it starts
// with namePrefix.
func (s *Store) walk(ctx context.Context, dirKey, namePrefix string, fn func(key string, size int64) error) error {
	dir := filepath.Join(s.root, filepath.FromSlash(dirKey))
	es, err := readDir(dir)
	if err != nil {
		return fmt.Errorf("listing %s in %s: %w", dirKey, s, err)
	}
	for _, e := range es {
		if !strings.HasPrefix(e.name, namePrefix) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("listing %s in %s: %w", dirKey, s, err)
		}
		key := dirKey + e.name
		if e.isDir {
			if err := s.walk(ctx, key+"/", "", fn); err != nil {
				return err
			}
			continue
		}
		fi, err := os.Lstat(filepath.Join(dir, e.name))
		if notFound(err) {
			continue // deleted since readDir
		}
		if err != nil {
			return fmt.Errorf("listing %s in %s: %w", key, s, err)
		}
		if err := fn(key, fi.Size()); err != nil {
			return err
		}
	}
	return nil
}

// ListDirs lists the subdirectories of prefix that hold at least one
// entry other than a temporary file.
func (s *Store) ListDirs(ctx context.Context, prefix string, fn func(name string) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("listing directories %q in %s: %w", prefix, s, err)
	}
	if err := store.ValidDirPrefix(prefix); err != nil {
		return fmt.Errorf("listing directories in %s: %w", s, err)
	}
	dir := filepath.Join(s.root, filepath.FromSlash(prefix))
	es, err := readDir(dir)
	if err != nil {
		return fmt.Errorf("listing directories %q in %s: %w", prefix, s, err)
	}
	for _, e := range es {
		if !e.isDir {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("listing directories %q in %s: %w", prefix, s, err)
		}
		sub, err := readDir(filepath.Join(dir, e.name))
		if err != nil {
			return fmt.Errorf("listing directories %q in %s: %w", prefix, s, err)
		}
		if len(sub) == 0 {
			continue // being created or pruned
		}
		if err := fn(e.name); err != nil {
			return err
		}
	}
	return nil
}
