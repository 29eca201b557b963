package agent_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/lodetest"
)

// TestNoLeakOpenClose opens, reads and closes 50 images on one agent (disk
// cache and origin tiers, read-ahead on), then creates and closes 20
// agents: goroutines and file descriptors return to where they were.
func TestNoLeakOpenClose(t *testing.T) {
	ctx := context.Background()
	w := imagetest.NewWorld(t, "a", "b")
	a := w.Build(t, "a", "app", 21, 4, relChunkSize)
	newAgent := func() *agent.Agent {
		disk, err := agent.NewDiskCache(t.TempDir(), 64<<20, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := agent.DefaultConfig()
		cfg.Mem = agent.NewMemCache(1 << 20)
		cfg.Tiers = []agent.Tier{disk, agent.NewOrigin(w.St, a.Ptr.Root)}
		ag, err := agent.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return ag
	}
	ag := newAgent()
	r0 := lodetest.Count(t)
	p := make([]byte, 3*relChunkSize)
	for i := range 50 {
		im, err := ag.Open("a/app", a.M)
		if err != nil {
			t.Fatal(err)
		}
		off := int64(i%4) * relChunkSize
		if n, err := im.ReadAt(ctx, p, off); err != nil || !bytes.Equal(p[:n], a.Plain[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
		}
		go im.Prefetch(ctx, []uint32{0, 1, 2, 3, 4, 5}, 2) // ends when the image closes
		if err := im.Close(); err != nil {
			t.Fatal(err)
		}
	}
	lodetest.CheckNoLeak(t, "50 images opened, read and closed", r0, 2)
	ag.Close()

	r0 = lodetest.Count(t)
	for range 20 {
		ag := newAgent()
		im, err := ag.Open("a/app", a.M)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := im.ReadAt(ctx, p, 0); err != nil {
			t.Fatal(err)
		}
		ag.Close()
	}
	lodetest.CheckNoLeak(t, "20 agents created and closed", r0, 2)
}
