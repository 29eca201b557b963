package gc

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/profile"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// Learned startup profiles follow their manifest: copied forward with it
// (the manifest id, and so the profile's key and additional data, do not
// change) and deleted with the root it left.
func TestProfilesFollowTheirManifest(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	w := newWorld(t, st)
	threeImages(w)
	m, p, err := catalog.Resolve(ctx, st, w.kr, "acme", "a")
	if err != nil {
		t.Fatal(err)
	}
	at := func(root store.RootID) profile.Image { return profile.Image{Root: root, ID: p.Manifest, M: m} }
	for i, order := range [][]uint32{{2, 0}, {2, 1}} {
		if _, err := profile.Publish(ctx, st, at(p.Root), order, w.now.Add(time.Duration(i)*time.Second), nil); err != nil {
			t.Fatal(err)
		}
	}
	c := NewCollector(st, testConfig(w))
	if _, err := c.RotateNow(ctx); err != nil {
		t.Fatal(err)
	}
	w.now = w.now.Add(hour)
	if _, err := c.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pointer(t, st, "acme", "a"); got.Root != r2 {
		t.Fatalf("acme/a is in root %s after the pass, want %s", got.Root, r2)
	}
	lp, err := profile.Load(ctx, st, at(r2))
	if err != nil || lp == nil || lp.Starts != 2 || !slices.Equal(lp.Chunks, []uint32{2, 0, 1}) {
		t.Fatalf("profile in the new root = %+v, %v; want chunks [2 0 1] of 2 starts", lp, err)
	}
	// A later start in the new root merges with the starts copied forward.
	if lp, err = profile.Publish(ctx, st, at(r2), []uint32{1}, w.now, nil); err != nil || lp.Starts != 3 {
		t.Errorf("publish in the new root = %+v, %v; want 3 starts", lp, err)
	}
	w.now = w.now.Add(50 * hour) // past grace
	if rep, err := c.Pass(ctx); err != nil || !slices.Contains(rep.Deleted, r1) {
		t.Fatalf("pass after grace deleted %v (%v), want %s", rep.Deleted, err, r1)
	}
	var left []string
	st.List(ctx, store.RootPrefix(r1), func(key string, _ int64) error { left = append(left, key); return nil })
	if len(left) != 0 {
		t.Errorf("objects left in the deleted root: %q", left)
	}
	mustCheck(t, w)
}
