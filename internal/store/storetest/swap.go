package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/lode-dev/lode/internal/store"
)

// testCompareAndSwap checks store.Swapper, when the store implements it:
// create-if-absent, swap, refusal of a stale old value, delete, and that of
// many concurrent swaps from the same old value exactly one wins.
func testCompareAndSwap(t *testing.T, s store.Store) {
	sw, ok := s.(store.Swapper)
	if !ok {
		return // a store without CAS: callers compare, then write
	}
	ctx := context.Background()
	key := "images/t/swap"
	steps := []struct {
		old, data []byte
		changed   bool
		want      []byte // after the step; nil: absent
	}{
		{nil, []byte("v1"), false, []byte("v1")},
		{nil, []byte("v9"), true, []byte("v1")},
		{[]byte("v0"), []byte("v9"), true, []byte("v1")},
		{[]byte("v1"), []byte("v2"), false, []byte("v2")},
		{[]byte("v2"), nil, false, nil},
		{[]byte("v2"), []byte("v3"), true, nil},
	}
	for i, st := range steps {
		err := sw.CompareAndSwap(ctx, key, st.old, st.data)
		if st.changed != errors.Is(err, store.ErrChanged) || !st.changed && err != nil {
			t.Errorf("step %d: CompareAndSwap(%q → %q) = %v, want changed %v", i, st.old, st.data, err, st.changed)
		}
		got, err := s.Get(ctx, key, nil)
		if st.want == nil {
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("step %d: Get = %q, %v; want not found", i, got, err)
			}
			continue
		}
		wantBytes(t, fmt.Sprintf("step %d", i), got, st.want)
	}
	mustPut(t, s, key, []byte("base"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := sw.CompareAndSwap(ctx, key, []byte("base"), []byte(fmt.Sprintf("w%d", i)))
			if err == nil {
				mu.Lock()
				won++
				mu.Unlock()
			} else if !errors.Is(err, store.ErrChanged) {
				t.Errorf("concurrent CompareAndSwap: %v", err)
			}
		}()
	}
	wg.Wait()
	if won != 1 {
		t.Errorf("%d of 8 concurrent swaps from the same value won, want 1", won)
	}
}
