package worker

import (
	"context"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/imagetest"
	"github.com/lode-dev/lode/internal/store"
)

// Over the file store (an origin on local disk) the image's prefetch yields
// to its reads; over any other store it does not (agent.Image.SetPrefetchYield).
func TestPrefetchYieldsOverLocalOrigin(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	w.Build(t, "default", "demo", 1, 8, 64<<10)
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		st   store.Store
		want bool
	}{
		{"file store", w.St, true},
		{"other store", slowStore{w.St, time.Millisecond}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			im, err := Open(ctx, tt.st, w.Kr, "default", "demo", testOptions(t.TempDir()), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			im.Prefetch(ctx, 8)
			if got := im.Image.PrefetchYields(); got != tt.want {
				t.Errorf("prefetch yields %v, want %v", got, tt.want)
			}
		})
	}
}

// Over the file store the disk cache is not filled from the origin (a
// second copy on the same disk); over any other store it is.
func TestDiskCacheNotFilledFromLocalOrigin(t *testing.T) {
	w := imagetest.NewWorld(t, "default")
	img := w.Build(t, "default", "demo", 1, 8, 64<<10)
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		st   store.Store
		want bool // disk cache filled
	}{
		{"file store", w.St, false},
		{"other store", slowStore{w.St, time.Millisecond}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			im, err := Open(ctx, tt.st, w.Kr, "default", "demo", testOptions(t.TempDir()), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			off := int64(firstChunk(img)) * int64(img.M.ChunkSize)
			if _, err := im.Image.ReadAt(ctx, buf, off); err != nil {
				t.Fatal(err)
			}
			st := im.Image.Stats()
			if err := im.Close(); err != nil { // waits for the write-backs
				t.Fatal(err)
			}
			if origin := st.Tiers[len(st.Tiers)-1]; origin.Hits == 0 {
				t.Fatalf("the read was not served by the origin: %+v", st.Tiers)
			}
			if got := im.Disk.Len() > 0; got != tt.want {
				t.Errorf("disk cache holds %d chunks after reads from the origin, want filled: %v", im.Disk.Len(), tt.want)
			}
		})
	}
}
