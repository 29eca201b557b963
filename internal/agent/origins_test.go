package agent

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/store"
)

// copyRoot copies every chunk of ti from testRoot to root, as the GC's
// copy-forward does (same names, same bytes).
func copyRoot(t *testing.T, ti *testImage, root store.RootID) {
	t.Helper()
	ctx := context.Background()
	for _, n := range ti.m.Names {
		if n.IsZero() {
			continue
		}
		b, err := ti.st.Get(ctx, store.ChunkKey(testRoot, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ti.st.Put(ctx, store.ChunkKey(root, n), b); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOriginsFetchOrder(t *testing.T) {
	const newRoot = store.RootID("r-000002")
	ti := buildImage(t, 4096, 4*4096, []int{2}, 1)
	copyRoot(t, ti, newRoot)
	// Chunk 1 is missing under the new root (an incomplete copy-forward),
	// chunk 3 under the old one.
	ctx := context.Background()
	if err := ti.st.Delete(ctx, store.ChunkKey(newRoot, ti.m.Names[1])); err != nil {
		t.Fatal(err)
	}
	if err := ti.st.Delete(ctx, store.ChunkKey(testRoot, ti.m.Names[3])); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		attach   []store.RootID
		chunk    int
		wantOK   bool
		notFound bool
	}{
		{"nothing attached", nil, 0, false, true},
		{"old root only", []store.RootID{testRoot}, 0, true, false},
		{"new root only, chunk missing there", []store.RootID{newRoot}, 1, false, true},
		{"both, missing in the newer: falls back", []store.RootID{testRoot, newRoot}, 1, true, false},
		{"both, missing in the older: newer serves", []store.RootID{newRoot, testRoot}, 3, true, false},
		{"old root only, chunk missing there", []store.RootID{testRoot}, 3, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOrigins(ti.st)
			for _, r := range tc.attach {
				defer o.Attach(r, ti.m)()
			}
			n := ti.m.Names[tc.chunk]
			ct, err := o.Fetch(ctx, n, nil)
			if (err == nil) != tc.wantOK {
				t.Fatalf("Fetch(chunk %d) error = %v, want ok=%v", tc.chunk, err, tc.wantOK)
			}
			if got := errors.Is(err, store.ErrNotFound); got != tc.notFound {
				t.Errorf("errors.Is(%v, ErrNotFound) = %v, want %v", err, got, tc.notFound)
			}
			if err == nil {
				plain, err := chunk.Open(ti.m.Ref(tc.chunk), ct, nil)
				if err != nil {
					t.Fatalf("opening the fetched chunk: %v", err)
				}
				if !bytes.Equal(plain, ti.plain[tc.chunk*4096:(tc.chunk+1)*4096]) {
					t.Errorf("chunk %d has the wrong plaintext", tc.chunk)
				}
			}
		})
	}
}

func TestOriginsAttachDetach(t *testing.T) {
	const newRoot = store.RootID("r-000002")
	ti := buildImage(t, 4096, 3*4096, []int{1}, 2)
	o := NewOrigins(ti.st)
	n := ti.m.Names[0]

	d1 := o.Attach(testRoot, ti.m)
	d2 := o.Attach(newRoot, ti.m)
	d3 := o.Attach(testRoot, ti.m) // a second image in the same root
	if diff := cmp.Diff([]store.RootID{newRoot, testRoot}, o.RootsOf(n)); diff != "" {
		t.Errorf("RootsOf after three attaches (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[store.RootID]int{testRoot: 2, newRoot: 1}, o.Roots()); diff != "" {
		t.Errorf("Roots (-want +got):\n%s", diff)
	}
	if got := o.RootsOf(ti.m.Names[1]); len(got) != 0 {
		t.Errorf("a hole has roots %v", got)
	}
	d1()
	d1() // idempotent
	if diff := cmp.Diff([]store.RootID{newRoot, testRoot}, o.RootsOf(n)); diff != "" {
		t.Errorf("RootsOf after one detach of two (-want +got):\n%s", diff)
	}
	d2()
	d3()
	if got := o.RootsOf(n); len(got) != 0 {
		t.Errorf("RootsOf after every detach = %v", got)
	}
	if got := o.Roots(); len(got) != 0 {
		t.Errorf("Roots after every detach = %v", got)
	}
	if len(o.names) != 0 {
		t.Errorf("the index keeps %d names after every detach", len(o.names))
	}
}

// Two images of the same content in two roots, read at once through one
// agent: every chunk is fetched once (the single flight is keyed by the
// chunk, not the root), and both read back.
func TestOriginsSharedAgent(t *testing.T) {
	const newRoot = store.RootID("r-000002")
	ti := buildImage(t, 4096, 16*4096, []int{5}, 3)
	copyRoot(t, ti, newRoot)
	o := NewOrigins(ti.st)
	ct := counting(o)
	c := DefaultConfig()
	c.Tiers = []Tier{ct}
	c.Mem = NewMemCache(1 << 20)
	c.ReadAhead = 0
	c.Log = testLogger(t, nil)
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var ims []*Image
	for i, r := range []store.RootID{testRoot, newRoot} {
		defer o.Attach(r, ti.m)()
		im, err := a.Open([]string{"t/old", "t/new"}[i], ti.m)
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		ims = append(ims, im)
	}
	var wg sync.WaitGroup
	got := make([][]byte, 2*4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, len(ti.plain))
			if _, err := ims[i%2].ReadAt(context.Background(), b, 0); err != nil {
				t.Errorf("reading image %d: %v", i%2, err)
			}
			got[i] = b
		}()
	}
	wg.Wait()
	for i, b := range got {
		if !bytes.Equal(b, ti.plain) {
			t.Errorf("reader %d got different bytes", i)
		}
	}
	for i, n := range ti.m.Names {
		if want := map[bool]int{true: 0, false: 1}[n.IsZero()]; ct.count(n) != want {
			t.Errorf("chunk %d fetched %d times, want %d", i, ct.count(n), want)
		}
	}
}

func BenchmarkOriginsAttach(b *testing.B) {
	ti := buildImage(b, 4096, 2048*4096, nil, 4)
	o := NewOrigins(ti.st)
	b.ReportAllocs()
	b.SetBytes(int64(len(ti.m.Names)) * 32)
	for b.Loop() {
		o.Attach(testRoot, ti.m)()
	}
}

func BenchmarkOriginsFetch(b *testing.B) {
	const newRoot = store.RootID("r-000002")
	ti := buildImage(b, 64<<10, 64*(64<<10), nil, 5)
	o := NewOrigins(ti.st)
	defer o.Attach(testRoot, ti.m)()
	defer o.Attach(newRoot, ti.m)() // newer, but empty: every fetch falls back
	buf := make([]byte, 0, 64<<10+chunk.Overhead)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(64 << 10)
	i := 0
	for b.Loop() {
		ct, err := o.Fetch(ctx, ti.m.Names[i%len(ti.m.Names)], buf[:0])
		if err != nil {
			b.Fatal(err)
		}
		buf = ct[:0]
		i++
	}
}
