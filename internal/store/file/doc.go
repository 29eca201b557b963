// Package file is the directory backend of store.Store: key k of a store
// rooted at DIR is the regular file DIR/k.
//
// It owns the mapping from keys to paths and how a write becomes visible: a
// write goes to a temporary file (".lode-tmp-*") in the key's directory, is
// fsynced, and is then renamed over the key (Put) or hard-linked to it
// (PutIfAbsent: link(2) fails with EEXIST if the key appeared, so concurrent
// writers are safe), after which the directory is fsynced. A reader
// therefore sees a whole old object, a whole new one, or none; a crash
// leaves at most a temporary file, which is never listed. Directories,
// including DIR, are created on first write and removed when their last key
// is deleted. A Batch (store.Batcher, what lode build uses for chunks) keeps
// the same order at two syncfs(2) per batch instead of two fsyncs per
// object: every staged file is synced before any is linked to its key.
//
// It does not own the layout of keys (store/keys.go) or any caching. Every
// key passes store.ValidKey, and keys with a segment beginning ".lode-tmp-"
// are refused, so no key reaches outside DIR or aliases a temporary file.
//
// It implements DESIGN.md, "Object store layout" (the embedded default
// origin). Hand-written over package os: the semantics needed (temp file +
// fsync + rename or link) are a few system calls.
package file
