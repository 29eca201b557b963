package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/store"
)

// keys lists the store's keys.
func keys(t *testing.T, s *Store) []string {
	t.Helper()
	var got []string
	if err := s.List(context.Background(), "", func(k string, _ int64) error { got = append(got, k); return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestBatch(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		finish func(store.Batch) error
		want   []string // keys after finish, besides "c/present"
	}{
		{"commit", func(b store.Batch) error { return b.Commit(ctx) }, []string{"c/a", "c/b"}},
		{"abort", func(b store.Batch) error { b.Abort(); return nil }, nil},
		{"cancelled commit", func(b store.Batch) error {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if err := b.Commit(cctx); !errors.Is(err, context.Canceled) {
				return fmt.Errorf("commit under a cancelled context: %v, want context.Canceled", err)
			}
			return nil
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if err := s.Put(ctx, "c/present", []byte("old")); err != nil {
				t.Fatal(err)
			}
			b := s.NewBatch()
			if err := b.PutIfAbsent(ctx, "c/present", []byte("new")); !errors.Is(err, store.ErrExists) {
				t.Fatalf("staging a present key: %v, want ErrExists", err)
			}
			for _, k := range []string{"c/a", "c/b"} {
				if err := b.PutIfAbsent(ctx, k, []byte("data of "+k)); err != nil {
					t.Fatal(err)
				}
			}
			if got := keys(t, s); len(got) != 1 {
				t.Fatalf("keys before commit: %v, want only c/present", got)
			}
			if err := tc.finish(b); err != nil {
				t.Fatal(err)
			}
			want := append([]string{"c/a", "c/b"}[:0:0], tc.want...)
			want = append(want, "c/present")
			if got := keys(t, s); strings.Join(got, ",") != strings.Join(sortedCopy(want), ",") {
				t.Fatalf("keys: %v, want %v", got, sortedCopy(want))
			}
			for _, k := range tc.want {
				got, err := s.Get(ctx, k, nil)
				if err != nil || !bytes.Equal(got, []byte("data of "+k)) {
					t.Fatalf("Get %s = %q, %v", k, got, err)
				}
			}
			// No temporary file is left either way.
			des, err := os.ReadDir(filepath.Join(s.Dir(), "c"))
			if err != nil {
				t.Fatal(err)
			}
			for _, de := range des {
				if strings.HasPrefix(de.Name(), tmpPrefix) {
					t.Fatalf("temporary file %s left", de.Name())
				}
			}
			if err := b.PutIfAbsent(ctx, "c/late", []byte("x")); err == nil {
				t.Fatal("staging after the batch finished succeeded")
			}
		})
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// BenchmarkPut512K compares storing 512 KiB chunks one PutIfAbsent (two
// fsyncs) at a time against one batch (two syncfs for all of them).
func BenchmarkPut512K(b *testing.B) {
	data := bytes.Repeat([]byte{7}, 512<<10)
	ctx := context.Background()
	for _, batched := range []bool{false, true} {
		b.Run(fmt.Sprintf("batch=%v", batched), func(b *testing.B) {
			s := newStore(b)
			b.SetBytes(int64(len(data)))
			var bt store.Batch
			if batched {
				bt = s.NewBatch()
			}
			for i := 0; i < b.N; i++ {
				k := fmt.Sprintf("c/%08d", i)
				var err error
				if batched {
					err = bt.PutIfAbsent(ctx, k, data)
				} else {
					err = s.PutIfAbsent(ctx, k, data)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			if batched {
				if err := bt.Commit(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
