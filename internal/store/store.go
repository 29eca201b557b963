package store

import (
	"context"
	"errors"
)

// Sentinel errors. Backends wrap them with the key that failed, e.g.
// fmt.Errorf("getting %s from %s: %w", key, store, ErrNotFound).
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrExists: PutIfAbsent found the key already present.
	ErrExists = errors.New("object already exists")
	// ErrInvalidKey: the key is not a valid object key (see ValidKey).
	ErrInvalidKey = errors.New("invalid object key")
	// ErrChanged: CompareAndSwap found the object changed since it was read.
	ErrChanged = errors.New("object changed")
)

// Swapper is implemented by stores that can replace an object atomically
// if, and only if, it still holds what the caller read: a compare-and-swap.
// mem (one mutex) and file (an flock on the store directory, against other
// processes too) implement it; s3 does not, and callers fall back to a
// compare-then-write (internal/catalog says where that leaves a window).
// CompareAndSwap calls are atomic with respect to each other, not to Put.
type Swapper interface {
	// CompareAndSwap sets key to data if its object equals old. old nil
	// means "absent"; data nil deletes the key. When the object is
	// anything else it returns an error wrapping ErrChanged.
	CompareAndSwap(ctx context.Context, key string, old, data []byte) error
}

// Store is the floor every backend provides: an S3-shaped map from keys to
// immutable-or-replaced byte strings.
//
// Contract, for every implementation (checked by store/storetest):
//   - Every method is safe for concurrent use and honours ctx.
//   - Writes are atomic: a reader sees the whole old object, the whole new
//     one, or ErrNotFound; never a torn or partial object.
//   - Get/GetRange append into dst[:0] when it has room, else allocate; the
//     returned slice is the caller's.
//   - GetRange returns exactly n bytes, or fewer only when the object ends
//     before off+n; off beyond the end returns an empty slice.
//   - List calls fn in the caller's goroutine, in lexical key order, for
//     every key that starts with prefix (recursively). An error from fn stops
//     the listing and is returned.
//   - ListDirs calls fn with the name of each immediate "directory" below
//     prefix (prefix must be empty or end in "/"): for keys a/b/c and a/d,
//     ListDirs("a/") yields "b". Order is lexical.
//   - Delete of a missing key is not an error.
//   - Errors name the key; missing keys wrap ErrNotFound.
type Store interface {
	Get(ctx context.Context, key string, dst []byte) ([]byte, error)
	GetRange(ctx context.Context, key string, off, n int64, dst []byte) ([]byte, error)
	// Put creates or replaces key.
	Put(ctx context.Context, key string, data []byte) error
	// PutIfAbsent creates key, or returns ErrExists if it is present. Two
	// concurrent PutIfAbsent calls with the same data both succeed or one
	// returns ErrExists; the object is then that data. Chunk objects are
	// content-addressed, so callers treat ErrExists as success.
	PutIfAbsent(ctx context.Context, key string, data []byte) error
	// Stat returns the size of key.
	Stat(ctx context.Context, key string) (size int64, err error)
	List(ctx context.Context, prefix string, fn func(key string, size int64) error) error
	ListDirs(ctx context.Context, prefix string, fn func(name string) error) error
	Delete(ctx context.Context, key string) error
	// String names the store in errors and logs ("file:///var/lib/lode",
	// "s3://bucket/prefix").
	String() string
}

// Batcher is implemented by stores that can write many new objects with one
// sync instead of one per object (file: one syncfs(2) for the whole batch).
// A batch's objects become visible only at Commit, after their bytes are
// durable; Abort (or a failed Commit) leaves none of the objects that were
// not yet linked, so a failed build still stores nothing visible.
type Batcher interface {
	NewBatch() Batch
}

// Batch is a set of PutIfAbsent writes made durable and visible together.
// PutIfAbsent is safe for concurrent use; Commit and Abort are called once,
// after every PutIfAbsent returned.
type Batch interface {
	// PutIfAbsent stages key; it returns ErrExists when key is present now.
	// A key that appears between the call and Commit is left as it is (the
	// objects are content-addressed, so either copy is the object).
	PutIfAbsent(ctx context.Context, key string, data []byte) error
	// Commit makes every staged object durable and then visible.
	Commit(ctx context.Context) error
	// Abort drops every staged object that Commit did not make visible.
	Abort()
}
