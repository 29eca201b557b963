// Package metrics holds what the daemons share about Prometheus metrics: the
// latency buckets every tier uses, and the /metrics handler over a registry.
// Each package defines its own collectors (agent, cachefleet, store) and
// registers them on the registry it is given; nothing here is global.
package metrics
