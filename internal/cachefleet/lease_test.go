package cachefleet_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/cachefleet"
	"github.com/lode-dev/lode/internal/cachefleet/fleettest"
	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/manifest"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// The lease API of one node, step by step: granted, held, released by a
// shard PUT, expired, and bad requests.
func TestLeaseAPI(t *testing.T) {
	f := fleettest.Start(t, 1, fleettest.Options{})
	node := f.URLs()[0]
	c := newClient(t, f.URLs(), func(c *cachefleet.ClientConfig) { c.M, c.K = 1, 1 })
	data, n := randomChunk(rand.New(rand.NewPCG(41, 41)), 4096)
	post := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Post(node+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After-Ms")
	}
	ctx := context.Background()
	steps := []struct {
		name string
		do   func() (int, string)
		code int
	}{
		{"first lease granted", func() (int, string) { return post(fleetproto.LeasePath(n, time.Second)) }, http.StatusCreated},
		{"second lease held", func() (int, string) { return post(fleetproto.LeasePath(n, time.Second)) }, http.StatusConflict},
		{"a shard PUT releases it", func() (int, string) {
			if err := c.Fill(ctx, n, data); err != nil {
				t.Fatal(err)
			}
			return post(fleetproto.LeasePath(n, 50*time.Millisecond))
		}, http.StatusCreated},
		{"it expires", func() (int, string) {
			time.Sleep(80 * time.Millisecond)
			return post(fleetproto.LeasePath(n, time.Second))
		}, http.StatusCreated},
		{"upper-case name", func() (int, string) { return post("/v1/leases/" + strings.ToUpper(n.String())) }, http.StatusBadRequest},
		{"bad query", func() (int, string) { return post("/v1/leases/" + n.String() + "?ttl=5") }, http.StatusBadRequest},
		{"GET is not allowed", func() (int, string) {
			resp, err := http.Get(node + fleetproto.LeasePath(n, time.Second))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode, ""
		}, http.StatusMethodNotAllowed},
	}
	for _, s := range steps {
		code, retry := s.do()
		if code != s.code {
			t.Errorf("%s: status %d, want %d", s.name, code, s.code)
		}
		if code == http.StatusConflict && retry == "" {
			t.Errorf("%s: 409 without Retry-After-Ms", s.name)
		}
	}
	// The client's view: held now (the last grant is live), free after a PUT.
	if ok, err := c.Lease(ctx, n, time.Second); ok || err != nil {
		t.Errorf("Lease of a held chunk = %v, %v; want false, nil", ok, err)
	}
	if err := c.Fill(ctx, n, data); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Lease(ctx, n, time.Second); !ok || err != nil {
		t.Errorf("Lease after a fill = %v, %v; want true, nil", ok, err)
	}
	// A node that cannot be reached never stands between a read and the origin.
	dead := newClient(t, []string{"127.0.0.1:1"}, func(c *cachefleet.ClientConfig) { c.M, c.K = 1, 1 })
	if ok, err := dead.Lease(ctx, n, time.Second); !ok || err == nil {
		t.Errorf("Lease with the node down = %v, %v; want true and the error", ok, err)
	}
}

// countingOrigin is an origin that takes delay per read and counts reads.
type countingOrigin struct {
	agent.Tier
	delay time.Duration
	reads atomic.Int64
}

func (o *countingOrigin) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	o.reads.Add(1)
	time.Sleep(o.delay)
	return o.Tier.Fetch(ctx, n, dst)
}

// Workers that all miss one chunk while the fleet is empty: with origin
// leases the origin is read once, without them once per worker. Every
// worker gets the right bytes either way.
func TestCoordinatedOriginReads(t *testing.T) {
	const workers = 8
	tests := []struct {
		name      string
		wait      time.Duration
		maxOrigin int64
	}{
		{"with leases", 2 * time.Second, 1},
		{"without leases", 0, workers},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fleettest.Start(t, 5, fleettest.Options{})
			st := mem.New()
			root := store.RootID("r1")
			s, err := chunk.NewSealer(bytes.Repeat([]byte{3}, chunk.SecretSize))
			if err != nil {
				t.Fatal(err)
			}
			plain := make([]byte, 64<<10)
			for i := range plain {
				plain[i] = byte(i * 7)
			}
			ref, ct, err := s.Seal(plain, []byte(root), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Put(context.Background(), store.ChunkKey(root, ref.Name), ct); err != nil {
				t.Fatal(err)
			}
			m := &manifest.Manifest{Root: string(root), ChunkSize: len(plain), ImageSize: int64(len(plain)), FSType: "ext4",
				Names: []chunk.Name{ref.Name}, Keys: []chunk.Key{ref.Key}}
			origin := &countingOrigin{Tier: agent.NewOrigin(st, root), delay: 100 * time.Millisecond}
			var coords []agent.Tier
			var images []*agent.Image
			for w := range workers {
				cl := newClient(t, f.URLs(), nil)
				coord := agent.Coordinate(origin, cl, tt.wait)
				coords = append(coords, coord)
				a, err := agent.New(agent.Config{Tiers: []agent.Tier{cl, coord}, FetchTimeout: 10 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
				im, err := a.Open(fmt.Sprintf("w%d", w), m)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { im.Close() })
				images = append(images, im)
			}
			var wg sync.WaitGroup
			for w, im := range images {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, len(plain))
					if _, err := im.ReadAt(context.Background(), buf, 0); err != nil {
						t.Errorf("worker %d: %v", w, err)
					} else if !bytes.Equal(buf, plain) {
						t.Errorf("worker %d: wrong bytes", w)
					}
				}()
			}
			wg.Wait()
			if got := origin.reads.Load(); got > tt.maxOrigin || (tt.wait == 0 && got != workers) {
				t.Errorf("origin reads = %d, want ≤ %d", got, tt.maxOrigin)
			}
			if tt.wait > 0 {
				var sum agent.LeaseStats
				for _, c := range coords {
					s, ok := agent.CoordinateStats(c)
					if !ok {
						t.Fatal("CoordinateStats: not a Coordinate tier")
					}
					sum.Granted += s.Granted
					sum.Waited += s.Waited
					sum.Filled += s.Filled
					sum.Fallback += s.Fallback
				}
				if sum.Granted != 1 || sum.Waited != workers-1 || sum.Filled != workers-1 || sum.Fallback != 0 {
					t.Errorf("lease stats over the workers = %+v, want 1 granted, %d waited and filled, 0 fallbacks", sum, workers-1)
				}
			}
		})
	}
}
