package catalog_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/store"
	"github.com/lode-dev/lode/internal/store/mem"
)

// plainStore hides mem's CompareAndSwap: a store without one, as s3 is.
type plainStore struct{ store.Store }

// Put, Swap and Remove on a store with a compare-and-swap and on one
// without: a swap or removal from a stale pointer changes nothing.
func TestPointerSwap(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   store.Store
	}{{"swapper", mem.New()}, {"compare then write", plainStore{mem.New()}}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := tc.st
			now := time.Unix(1700000000, 0).UTC()
			p1 := store.Pointer{Root: store.RootIDFor(1), Manifest: hex64('a'), Created: now}
			p2 := store.Pointer{Root: store.RootIDFor(1), Manifest: hex64('b'), Created: now}
			p3 := store.Pointer{Root: store.RootIDFor(2), Manifest: hex64('b'), Created: now}
			if err := catalog.Swap(ctx, st, "t", "app", p1, p2); !errors.Is(err, catalog.ErrChanged) {
				t.Errorf("Swap of a missing pointer = %v, want ErrChanged", err)
			}
			if err := catalog.Put(ctx, st, "t", "app", p1); err != nil {
				t.Fatal(err)
			}
			if err := catalog.Swap(ctx, st, "t", "app", p1, p2); err != nil {
				t.Fatalf("Swap from the current pointer = %v", err)
			}
			if err := catalog.Swap(ctx, st, "t", "app", p1, p3); !errors.Is(err, catalog.ErrChanged) {
				t.Errorf("Swap from a stale pointer = %v, want ErrChanged", err)
			}
			if err := catalog.Remove(ctx, st, "t", "app", p1); !errors.Is(err, catalog.ErrChanged) {
				t.Errorf("Remove with a stale pointer = %v, want ErrChanged", err)
			}
			if got, err := catalog.Lookup(ctx, st, "t", "app"); err != nil || !catalog.Same(got, p2) {
				t.Errorf("pointer = %+v, %v; want %+v", got, err, p2)
			}
			if err := catalog.Remove(ctx, st, "t", "app", p2); err != nil {
				t.Fatalf("Remove = %v", err)
			}
			if _, err := catalog.Lookup(ctx, st, "t", "app"); !errors.Is(err, catalog.ErrNoImage) {
				t.Errorf("after Remove: Lookup = %v, want ErrNoImage", err)
			}
		})
	}
}

func hex64(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}
