// Package store owns the object store interface that every backend
// implements and the object layout shared by the build pipeline, the agent
// and the garbage collector (keys.go), and the records kept in it that are
// not image pointers (those are internal/catalog's): the root record — its
// states, their transition table (roots.go) — and a root's alarm marker
// (alarm.go). The collector, builds and the worker daemon use them.
//
// Store is the floor every backend provides; Swapper (an atomic
// compare-and-swap) is optional: file and mem have it, s3 does not. So is
// Batcher (many new objects made durable with one sync; file has it, and
// lode build stores its chunks through it).
//
// It implements DESIGN.md, "Object store layout". Backends live in
// subpackages (store/file, store/s3, store/mem); the conformance suite that
// all of them pass is store/storetest.
package store
