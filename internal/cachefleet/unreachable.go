package cachefleet

// Errors that say whether the fleet was unreachable, as opposed to reachable
// without the chunk. A consumer (the agent's "lazy loading degraded" signal)
// tests for the method, so it needs no import of this package.

type noNodesError struct{}

func (noNodesError) Error() string     { return "no fleet nodes" }
func (noNodesError) Unreachable() bool { return true }

// Unreachable reports whether some placed nodes failed to answer (as opposed
// to answering without the chunk).
func (e *MissError) Unreachable() bool { return e.Failures > 0 }
