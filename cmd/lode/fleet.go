package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/lode-dev/lode/internal/agent"
)

// fleetOptions select the cache fleet between L1 and the origin.
type fleetOptions struct {
	nodes []string
}

func (o *fleetOptions) bind(f *pflag.FlagSet) {
	f.StringSliceVar(&o.nodes, "fleet", nil, "cache fleet nodes (host:port or DNS names resolving to several nodes), comma-separated")
}

// open returns the fleet tier, or nil when no fleet is configured.
func (o *fleetOptions) open(ctx context.Context, reg prometheus.Registerer) (agent.Tier, func() error, error) {
	return nil, func() error { return nil }, nil
}
