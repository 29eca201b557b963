package profile

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

func TestPublishLoad(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	kr := keyring(t, "acme", "other")
	im, _ := opened(t, kr, "acme", 64)
	if p, err := Load(ctx, st, im); p != nil || err != nil {
		t.Fatalf("Load before any publish = %v, %v", p, err)
	}
	t0 := time.Unix(1700000000, 0)
	if _, err := Publish(ctx, st, im, []uint32{1, 2, 3}, t0, nil); err != nil {
		t.Fatal(err)
	}
	got, err := Publish(ctx, st, im, []uint32{3, 2, 9}, t0.Add(time.Minute), nil)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(ctx, st, im)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Starts != 2 || !slices.Equal(loaded.Chunks, got.Chunks) || !slices.Equal(loaded.Chunks, []uint32{2, 3, 1, 9}) {
		t.Errorf("Load = %v (%d starts), want [2 3 1 9] of 2 starts", loaded.Chunks, loaded.Starts)
	}
	if !loaded.Created.Equal(t0) || !loaded.Updated.Equal(t0.Add(time.Minute)) {
		t.Errorf("Load times %v..%v", loaded.Created, loaded.Updated)
	}

	// A rebuild (new manifest id) has no profile; another tenant's image
	// with the merged object copied over it does not open.
	rebuilt, _ := opened(t, kr, "acme", 64)
	if p, err := Load(ctx, st, rebuilt); p != nil || err != nil {
		t.Errorf("Load of a rebuilt image = %v, %v; want none", p, err)
	}
	b, err := st.Get(ctx, MergedKey(root, im.ID), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := opened(t, kr, "other", 64)
	if err := st.Put(ctx, MergedKey(root, other.ID), b); err != nil {
		t.Fatal(err)
	}
	if p, err := Load(ctx, st, other); p != nil || !errors.Is(err, ErrStale) {
		t.Errorf("Load of another manifest's profile = %v, %v; want ErrStale", p, err)
	}
	if err := st.Put(ctx, MergedKey(root, rebuilt.ID), []byte("LODEPRF\x00garbage")); err != nil {
		t.Fatal(err)
	}
	if p, err := Load(ctx, st, rebuilt); p != nil || err == nil {
		t.Errorf("Load of garbage = %v, %v; want an error", p, err)
	}
	// Nothing in range: nothing published.
	if _, err := Publish(ctx, st, im, []uint32{64, 65}, t0, nil); err == nil {
		t.Error("Publish of chunks out of range succeeded")
	}
}

// Publishers racing on one manifest lose no start: the last merge may miss
// one, and the next publish puts it back from the start objects.
func TestPublishConcurrent(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	im, _ := opened(t, keyring(t, "acme"), "acme", 64)
	t0 := time.Unix(1700000000, 0)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if _, err := Publish(ctx, st, im, []uint32{uint32(10 + i), 1}, t0.Add(time.Duration(i)*time.Second), nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := Publish(ctx, st, im, []uint32{1}, t0.Add(time.Minute), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Starts != 5 || got.Chunks[0] != 1 || got.Counts[0] != 5 || len(got.Chunks) != 5 {
		t.Errorf("after 5 starts: %v %v (%d starts)", got.Chunks, got.Counts, got.Starts)
	}
}

func TestCopyForward(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	im, _ := opened(t, keyring(t, "acme"), "acme", 16)
	if _, err := Publish(ctx, st, im, []uint32{1, 2}, time.Unix(1700000000, 0), nil); err != nil {
		t.Fatal(err)
	}
	objs, _, err := CopyForward(ctx, st, root, "r2", im.ID)
	if err != nil || objs != 2 {
		t.Fatalf("CopyForward = %d, %v; want 2 objects", objs, err)
	}
	moved := im
	moved.Root = "r2"
	p, err := Load(ctx, st, moved)
	if err != nil || p == nil || !slices.Equal(p.Chunks, []uint32{1, 2}) {
		t.Errorf("Load in the new root = %v, %v", p, err)
	}
	if objs, _, err := CopyForward(ctx, st, root, "r2", im.ID); objs != 0 || err != nil {
		t.Errorf("second CopyForward = %d, %v; want 0, nil", objs, err)
	}
	var keys []string
	st.List(ctx, store.RootPrefix("r2"), func(k string, _ int64) error { keys = append(keys, k); return nil })
	for _, k := range keys {
		if !strings.HasPrefix(k, store.ProfilesPrefix("r2", im.ID)) {
			t.Errorf("CopyForward wrote %s", k)
		}
	}
}

// lode build --learn-profile=false: publishers publish nothing, inspect says so.
func TestDisableLearning(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	im, _ := opened(t, keyring(t, "acme"), "acme", 16)
	if s := Summarize(ctx, st, im); s.Present || s.LearningOff || !strings.Contains(s.Text(time.Now()), "none yet") {
		t.Errorf("Summarize before = %+v", s)
	}
	if err := DisableLearning(ctx, st, im.Root, im.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := Publish(ctx, st, im, []uint32{1}, time.Unix(1700000000, 0), nil); !errors.Is(err, ErrLearningOff) {
		t.Errorf("Publish with learning off = %v, want ErrLearningOff", err)
	}
	if _, err := st.Stat(ctx, MergedKey(root, im.ID)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a profile was stored with learning off: %v", err)
	}
	if s := Summarize(ctx, st, im); s.Present || !s.LearningOff || !strings.Contains(s.Text(time.Now()), "learning turned off") {
		t.Errorf("Summarize after = %+v (%s)", s, s.Text(time.Now()))
	}
}
