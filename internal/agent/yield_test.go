package agent

import (
	"context"
	"testing"
	"time"
)

// With SetPrefetchYield, Prefetch starts no fetch while a read of the image
// waits for its own; without it, the prefetch fetches alongside the read.
func TestPrefetchYieldsToReads(t *testing.T) {
	ti := stdImage(t) // holes at 2, 5, 6, 10
	for _, tt := range []struct {
		name  string
		yield bool
	}{{"yields", true}, {"does not yield", false}} {
		t.Run(tt.name, func(t *testing.T) {
			origin := counting(NewOrigin(ti.st, testRoot))
			origin.gate = make(chan struct{})
			im := openImage(t, ti, Config{Mem: NewMemCache(1 << 20), Tiers: []Tier{origin}, MaxConcurrentFetches: 8})
			im.SetPrefetchYield(tt.yield)
			ctx := context.Background()
			readErr := make(chan error, 1)
			go func() {
				_, err := im.ReadAt(ctx, make([]byte, 4096), 0)
				readErr <- err
			}()
			waitFor(t, "the read's fetch of chunk 0", func() bool { return origin.count(ti.m.Names[0]) == 1 })
			prefetched := make(chan int, 1)
			go func() {
				n, _ := im.Prefetch(ctx, []uint32{1, 3, 4}, 3)
				prefetched <- n
			}()
			if tt.yield {
				// The read is still blocked: nothing of the prefetch may start.
				deadline := time.Now().Add(200 * time.Millisecond)
				for time.Now().Before(deadline) {
					if n := origin.count(ti.m.Names[1]); n != 0 {
						t.Fatalf("chunk 1 prefetched (%d fetches) while a read waited on chunk 0", n)
					}
					time.Sleep(5 * time.Millisecond)
				}
			} else {
				waitFor(t, "the prefetch of chunk 1 beside the read", func() bool { return origin.count(ti.m.Names[1]) == 1 })
			}
			close(origin.gate)
			if err := <-readErr; err != nil {
				t.Fatal(err)
			}
			if n := <-prefetched; n != 3 {
				t.Errorf("prefetch started %d fetches, want 3", n)
			}
			for _, j := range []int{1, 3, 4} {
				if n := origin.count(ti.m.Names[j]); n != 1 {
					t.Errorf("chunk %d fetched %d times, want 1", j, n)
				}
			}
		})
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
