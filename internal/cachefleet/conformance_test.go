package cachefleet_test

import (
	"context"
	"testing"

	"github.com/lode-dev/lode/internal/agent/tiertest"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachefleet/fleettest"
	"github.com/lode-dev/lode/internal/chunk"
)

// The fleet client over real nodes passes the Tier suite.
func TestTierConformance(t *testing.T) {
	f := fleettest.Start(t, 3, fleettest.Options{})
	tiertest.Run(t, func(t *testing.T) tiertest.Subject {
		c := newClient(t, f.URLs(), func(c *cachefleet.ClientConfig) { c.M, c.K = 2, 3 })
		return tiertest.Subject{Tier: c.Client, Caches: true, Seed: func(t *testing.T, n chunk.Name, ct []byte) {
			if err := c.Fill(context.Background(), n, ct); err != nil {
				t.Fatal(err)
			}
		}}
	})
}
