// Package store owns the object store interface that every backend
// implements and the object layout shared by the build pipeline, the agent
// and the garbage collector (keys.go).
//
// It implements DESIGN.md, "Object store layout". Backends live in
// subpackages (store/file, store/s3, store/mem); the conformance suite that
// all of them pass is store/storetest.
package store
