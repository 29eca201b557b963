package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
)

// fleetOptions select the cache fleet between L1 and the origin.
type fleetOptions struct {
	nodes []string
	m, k  int
}

func (o *fleetOptions) bind(f *pflag.FlagSet) {
	f.StringSliceVar(&o.nodes, "fleet", nil, "cache fleet nodes (host:port, or DNS names resolving to several nodes), comma-separated")
	f.IntVar(&o.m, "fleet-data-shards", 4, "Reed–Solomon data shards (M): a chunk is rebuilt from any M replies")
	f.IntVar(&o.k, "fleet-shards", 5, "total shards per chunk (K = M data + parity), one per node")
}

// open returns the fleet tier, or nil when no fleet is configured.
func (o *fleetOptions) open(ctx context.Context, reg prometheus.Registerer) (agent.Tier, func() error, error) {
	if len(o.nodes) == 0 {
		return nil, func() error { return nil }, nil
	}
	c := cachefleet.ClientConfig{Nodes: o.nodes, M: o.m, K: o.k, Log: logger}
	if reg != nil {
		c.Metrics = cachefleet.NewClientMetrics(reg)
	}
	cl, err := cachefleet.NewClient(c)
	if err != nil {
		return nil, nil, err
	}
	return cl, cl.Close, nil
}
