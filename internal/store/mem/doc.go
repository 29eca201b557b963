// Package mem is an in-memory store.Store, for tests and the in-process
// demo.
//
// It owns nothing but a map guarded by a mutex; it does not persist, evict or
// bound memory. Stores opened by the same name (Open) in one process are the
// same store, so a mem:// URL can be shared by components wired separately.
//
// It implements the Store contract of DESIGN.md, "Object store layout", and
// passes store/storetest. Hand-written: it is a few dozen lines over a map.
package mem
