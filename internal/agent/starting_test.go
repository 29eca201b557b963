package agent

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// twoOrigins serves the chunks of two test images; Fetches of the starting
// image's chunks wait for gate, and inTier counts them while they wait.
type twoOrigins struct {
	a, b    Tier
	held    map[chunk.Name]bool
	gate    chan struct{}
	inTier  atomic.Int64
	maxHeld atomic.Int64
}

func (o *twoOrigins) Fetch(ctx context.Context, n chunk.Name, dst []byte) ([]byte, error) {
	if o.held[n] {
		now := o.inTier.Add(1)
		for {
			m := o.maxHeld.Load()
			if now <= m || o.maxHeld.CompareAndSwap(m, now) {
				break
			}
		}
		defer o.inTier.Add(-1)
		select {
		case <-o.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	b, err := o.a.Fetch(ctx, n, dst)
	if errors.Is(err, store.ErrNotFound) {
		return o.b.Fetch(ctx, n, dst)
	}
	return b, err
}
func (o *twoOrigins) Fill(context.Context, chunk.Name, []byte) error { return nil }
func (o *twoOrigins) Name() string                                   { return "origin" }

// A storm of reads from starting images takes at most three quarters of the
// fetch slots: a running container's read still gets one. Without
// SetStarting, the same storm takes every slot and the running read waits.
func TestStartingImagesLeaveSlotsToRunningOnes(t *testing.T) {
	const cs, slots = 4096, 4
	tests := []struct {
		name        string
		starting    bool
		wantRunning bool  // the running image's read completes while the storm holds its slots
		wantHeld    int64 // the storm's fetches in the tier at once
	}{
		{"starting images capped at three quarters", true, true, slots - slots/4},
		{"without SetStarting the storm takes every slot", false, false, slots},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := buildImage(t, cs, 8*cs, nil, 31)
			run := buildImage(t, cs, 2*cs, nil, 32)
			o := &twoOrigins{a: NewOrigin(st.st, testRoot), b: NewOrigin(run.st, testRoot), held: map[chunk.Name]bool{}, gate: make(chan struct{})}
			for _, n := range st.m.Names {
				o.held[n] = true
			}
			a, err := New(Config{Tiers: []Tier{o}, MaxConcurrentFetches: slots, FetchTimeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			starting, err := a.Open("starting", st.m)
			if err != nil {
				t.Fatal(err)
			}
			defer starting.Close()
			starting.SetStarting(tt.starting)
			running, err := a.Open("running", run.m)
			if err != nil {
				t.Fatal(err)
			}
			defer running.Close()

			// The storm: every chunk of the starting image at once.
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := make([]byte, cs)
					if _, err := starting.ReadAt(context.Background(), buf, int64(i)*cs); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf, st.plain[i*cs:(i+1)*cs]) {
						errs <- errors.New("wrong bytes")
					}
				}()
			}
			deadline := time.Now().Add(5 * time.Second)
			for o.inTier.Load() < tt.wantHeld && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond) // let any fetch beyond the bound show itself
			if got := o.inTier.Load(); got != tt.wantHeld {
				t.Errorf("storm fetches in the tier = %d, want %d", got, tt.wantHeld)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			buf := make([]byte, cs)
			_, err = running.ReadAt(ctx, buf, cs)
			cancel()
			if tt.wantRunning {
				if err != nil || !bytes.Equal(buf, run.plain[cs:2*cs]) {
					t.Errorf("running image's read during the storm = %v, want its bytes", err)
				}
			} else if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("running image's read with every slot taken = %v, want it to wait past its deadline", err)
			}

			close(o.gate)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("storm read: %v", err)
			}
			if got := o.maxHeld.Load(); got > tt.wantHeld {
				t.Errorf("at most %d storm fetches were in the tier at once, want ≤ %d", got, tt.wantHeld)
			}
		})
	}
}
