package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/lode-dev/lode/internal/store"
	"golang.org/x/sys/unix"
)

// Batch stages PutIfAbsent writes as temporary files without fsync; Commit
// makes them durable with one syncfs(2) of the store's file system, links
// each to its key, and syncs once more so the new names are durable too.
// An object's name therefore never exists before its bytes are on disk, as
// with PutIfAbsent, at two syncs per batch instead of two per object.
type Batch struct {
	s  *Store
	mu sync.Mutex
	// staged maps a temporary file to the key's path.
	staged []staged
	done   bool
}

type staged struct{ tmp, path string }

var _ store.Batcher = (*Store)(nil)

// NewBatch starts a batch (store.Batcher).
func (s *Store) NewBatch() store.Batch { return &Batch{s: s} }

// PutIfAbsent writes data to a temporary file in key's directory and starts
// its write-back; the key appears at Commit.
func (b *Batch) PutIfAbsent(ctx context.Context, key string, data []byte) error {
	s := b.s
	p, err := s.path(ctx, "putting", key)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(p); err == nil {
		return fmt.Errorf("putting %s in %s: %w", key, s, store.ErrExists)
	}
	tmp, err := s.createTemp(filepath.Dir(p))
	if err != nil {
		return fmt.Errorf("putting %s in %s: %w", key, s, err)
	}
	name := tmp.Name()
	err = s.write(tmp, data)
	if err == nil {
		// Start write-back now so that Commit's sync waits for less; a
		// hint, so its error is not the write's.
		_ = unix.SyncFileRange(int(tmp.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("putting %s in %s: writing: %w", key, s, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		os.Remove(name)
		return fmt.Errorf("putting %s in %s: batch already committed or aborted", key, s)
	}
	b.staged = append(b.staged, staged{name, p})
	return nil
}

// Commit syncs the staged files, links them to their keys and syncs the
// directories. On error, the files not yet linked are removed.
func (b *Batch) Commit(ctx context.Context) error {
	b.mu.Lock()
	b.done = true
	st := b.staged
	b.staged = nil
	b.mu.Unlock()
	if len(st) == 0 {
		return nil
	}
	s := b.s
	linked := 0
	defer func() {
		for _, f := range st[linked:] {
			os.Remove(f.tmp)
		}
	}()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("committing %d objects to %s: %w", len(st), s, err)
	}
	if err := syncFS(s.root); err != nil {
		return fmt.Errorf("committing %d objects to %s: syncing: %w", len(st), s, err)
	}
	for _, f := range st {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("committing %d objects to %s: %w", len(st), s, err)
		}
		err := os.Link(f.tmp, f.path)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("committing %s to %s: %w", f.path, s, err)
		}
		os.Remove(f.tmp)
		linked++
	}
	if err := syncFS(s.root); err != nil {
		return fmt.Errorf("committing %d objects to %s: syncing directories: %w", len(st), s, err)
	}
	return nil
}

// Abort removes every staged file.
func (b *Batch) Abort() {
	b.mu.Lock()
	b.done = true
	st := b.staged
	b.staged = nil
	b.mu.Unlock()
	for _, f := range st {
		os.Remove(f.tmp)
	}
}

// syncFS syncs the file system holding dir (syncfs(2)).
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
