package agent_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/agent/tiertest"
	"github.com/lode-dev/lode/internal/blockdev/devicetest"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// grantAll is a lease fleet that grants every lease and holds nothing.
type grantAll struct{ *tiertest.Map }

func (grantAll) Lease(context.Context, chunk.Name, time.Duration) (bool, error) { return true, nil }

// Every tier and decorator of this package passes the Tier suite (the
// fleet client runs it in internal/cachefleet).
func TestTierConformance(t *testing.T) {
	root := store.RootIDFor(1)
	originSubject := func(t *testing.T, wrap func(agent.Tier) agent.Tier) tiertest.Subject {
		st := mem.New()
		return tiertest.Subject{Tier: wrap(agent.NewOrigin(st, root)), Seed: func(t *testing.T, n chunk.Name, ct []byte) {
			if err := st.Put(context.Background(), store.ChunkKey(root, n), ct); err != nil {
				t.Fatal(err)
			}
		}}
	}
	mapSubject := func(t *testing.T, wrap func(agent.Tier) agent.Tier) tiertest.Subject {
		m := tiertest.NewMap("")
		return tiertest.Subject{Tier: wrap(m), Caches: true, Seed: func(t *testing.T, n chunk.Name, ct []byte) {
			m.Fill(context.Background(), n, ct)
		}}
	}
	same := func(t agent.Tier) agent.Tier { return t }
	tests := []struct {
		name string
		new  func(t *testing.T) tiertest.Subject
	}{
		{"Disk", func(t *testing.T) tiertest.Subject {
			dc, err := agent.NewDiskCache(filepath.Join(t.TempDir(), "cache"), 64<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			return tiertest.Subject{Tier: dc, Caches: true, Seed: func(t *testing.T, n chunk.Name, ct []byte) {
				if err := dc.Fill(context.Background(), n, ct); err != nil {
					t.Fatal(err)
				}
			}}
		}},
		{"Origin", func(t *testing.T) tiertest.Subject { return originSubject(t, same) }},
		{"Origins", func(t *testing.T) tiertest.Subject {
			st := mem.New()
			o := agent.NewOrigins(st)
			return tiertest.Subject{Tier: o, Seed: func(t *testing.T, n chunk.Name, ct []byte) {
				if err := st.Put(context.Background(), store.ChunkKey(root, n), ct); err != nil {
					t.Fatal(err)
				}
				o.Attach(root, &manifest.Manifest{Names: []chunk.Name{n}})
			}}
		}},
		{"Limit", func(t *testing.T) tiertest.Subject {
			return mapSubject(t, func(t agent.Tier) agent.Tier { return agent.Limit(t, 2) })
		}},
		{"RateLimit", func(t *testing.T) tiertest.Subject {
			return mapSubject(t, func(t agent.Tier) agent.Tier { return agent.RateLimit(t, 1e6, 100) })
		}},
		{"Retry", func(t *testing.T) tiertest.Subject {
			return mapSubject(t, func(t agent.Tier) agent.Tier { return agent.Retry(t, 3, time.Millisecond) })
		}},
		{"Coordinate", func(t *testing.T) tiertest.Subject {
			return originSubject(t, func(o agent.Tier) agent.Tier {
				return agent.Coordinate(o, grantAll{tiertest.NewMap("fleet")}, 50*time.Millisecond)
			})
		}},
		{"ProtectedOrigin", func(t *testing.T) tiertest.Subject {
			return originSubject(t, func(o agent.Tier) agent.Tier {
				return agent.Limit(agent.Retry(agent.RateLimit(o, 1e6, 100), 3, time.Millisecond), 4)
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tiertest.Run(t, tt.new) })
	}
}

// An image opened on the agent passes the Device suite.
func TestDeviceConformanceImage(t *testing.T) {
	w := imagetest.NewWorld(t, "a")
	img := w.Build(t, "a", "app", 5, 10, 64<<10)
	c := agent.DefaultConfig()
	c.Tiers = []agent.Tier{agent.NewOrigin(w.St, img.Ptr.Root)}
	c.Mem = agent.NewMemCache(8 << 20)
	a, err := agent.New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	im, err := a.Open("a/app", img.M)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	devicetest.Run(t, im, img.Plain)
}
