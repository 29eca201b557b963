package cachefleet

import "errors"

// Sentinel errors.
var (
	// ErrTooFewShards means fewer than M valid shards of a chunk could be
	// read. Errors that wrap it also wrap store.ErrNotFound.
	ErrTooFewShards = errors.New("too few shards")
	// ErrNoNodes means the client has no fleet nodes to ask. It reports
	// Unreachable() == true.
	ErrNoNodes error = noNodesError{}
)

// Errors that say whether the fleet was unreachable, as opposed to reachable
// without the chunk. A consumer (the agent's "lazy loading degraded" signal)
// tests for the method, so it needs no import of this package.

type noNodesError struct{}

func (noNodesError) Error() string     { return "no fleet nodes" }
func (noNodesError) Unreachable() bool { return true }

// Unreachable reports whether some placed nodes failed to answer (as opposed
// to answering without the chunk).
func (e *MissError) Unreachable() bool { return e.Failures > 0 }
