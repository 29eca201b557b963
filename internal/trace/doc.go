// Package trace owns the fetch trace of a cold start (issue #21): one JSON
// line per chunk fetch (when it was asked for, why — which read at which
// offset and length, which read-ahead and the read that triggered it, which
// prefetch hint —, when it got a fetch slot, when it completed, which tier
// served it, and which reads waited on it), one per read that reached the
// agent (its offset, length, and the fetches it blocked on), and marks for
// the phases of a start (mounted, exec, exit).
//
// The agent writes the trace (internal/agent, Config.Trace) when a worker
// command is given --trace FILE or LODE_TRACE; Analyze reads it back and
// finds the serial chain: the longest sequence of fetches each asked for
// only after the previous one completed, which is what a start costs in
// round trips however many fetches it makes. bench/serial prints it.
//
// It is written by hand: the events are a handful of fields, and a tracing
// library (OpenTelemetry) would add an exporter and a collector to a file
// that a test and a bench tool read back.
package trace
