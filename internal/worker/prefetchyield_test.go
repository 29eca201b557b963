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
